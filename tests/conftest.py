"""Tiny random models built from configs: fast, offline, one per architecture family."""

from __future__ import annotations

import pytest
import torch
import transformers as T

COMMON = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=128)

# name -> (config class, model class, config kwargs)
ARCHITECTURES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(COMMON, num_key_value_heads=2)),
    "gemma": (T.GemmaConfig, T.GemmaForCausalLM, dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(COMMON, num_key_value_heads=2, pad_token_id=0)),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=32, n_layer=4, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)),
    "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM, dict(COMMON)),
    "opt": (T.OPTConfig, T.OPTForCausalLM, dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64, vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32)),
    "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(COMMON, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)),
    "bert": (T.BertConfig, T.BertForMaskedLM, dict(COMMON, max_position_embeddings=64)),
}


def build_tiny(name: str) -> torch.nn.Module:
    config_cls, model_cls, kwargs = ARCHITECTURES[name]
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs)).eval()


@pytest.fixture(params=sorted(ARCHITECTURES))
def any_tiny(request):
    return request.param, build_tiny(request.param)


@pytest.fixture
def tiny_llama():
    return build_tiny("llama")


@pytest.fixture
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama saved as a normal HF folder, for loading through the CLI."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama").save_pretrained(path)
    return path
