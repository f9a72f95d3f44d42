import pytest
import torch
from torch import nn

from freezetune.plans.anatomy import find_anatomy

from conftest import build_tiny

# name -> (blocks path, a final-norm name, a head name or None, tied embeddings?)
EXPECTED = {
    "llama": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "qwen2": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "mistral": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "gemma": ("model.layers", "model.norm.weight", "lm_head.weight", True),
    "phi3": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "gpt2": ("transformer.h", "transformer.ln_f.weight", "lm_head.weight", True),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm.weight", "lm_head.weight", False),
    "opt": ("model.decoder.layers", "model.decoder.final_layer_norm.weight", "lm_head.weight", True),
    "mixtral": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "qwen2_moe": ("model.layers", "model.norm.weight", "lm_head.weight", False),
    "bert": ("bert.encoder.layer", None, "cls.predictions.transform.dense.weight", True),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_parts_found_generically(arch):
    model = build_tiny(arch)
    anatomy = find_anatomy(model)
    blocks_path, norm_name, head_name, tied = EXPECTED[arch]
    by_name = {e.name: e for e in anatomy.entries}
    assert anatomy.blocks_path == blocks_path
    assert anatomy.num_layers == 4
    assert set(by_name) == {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert anatomy.total_params == sum(p.numel() for p in model.parameters())
    embed_name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert by_name[embed_name].part == "embeddings"
    if norm_name:
        assert by_name[norm_name].part == "norm"
    else:
        assert not [e for e in anatomy.entries if e.part == "norm"]
    assert by_name[head_name].part == "head"
    assert bool(anatomy.tied_groups()) == tied
    # every block has attention, MLP and norm parameters, and block indices run 0..3
    for layer in range(4):
        roles = {e.role for e in anatomy.entries if e.layer == layer}
        assert roles == {"attn", "mlp", "norm"}, (arch, layer, roles)


def test_position_embeddings_count_as_embeddings():
    gpt2 = {e.name: e for e in find_anatomy(build_tiny("gpt2")).entries}
    assert gpt2["transformer.wpe.weight"].part == "embeddings"
    bert = {e.name: e for e in find_anatomy(build_tiny("bert")).entries}
    assert bert["bert.embeddings.position_embeddings.weight"].part == "embeddings"
    assert bert["bert.embeddings.LayerNorm.weight"].part == "embeddings"


def test_roles_inside_blocks():
    entries = {e.name: e for e in find_anatomy(build_tiny("qwen2_moe")).entries}
    assert entries["model.layers.1.self_attn.q_proj.bias"].role == "attn"
    assert entries["model.layers.1.mlp.gate.weight"].role == "mlp"
    assert entries["model.layers.1.mlp.gate.weight"].expert
    assert entries["model.layers.1.mlp.experts.down_proj"].role == "mlp"
    assert entries["model.layers.1.mlp.shared_expert.up_proj.weight"].expert
    assert entries["model.layers.1.post_attention_layernorm.weight"].role == "norm"
    bert = {e.name: e for e in find_anatomy(build_tiny("bert")).entries}
    assert bert["bert.encoder.layer.2.attention.self.key.weight"].role == "attn"
    assert bert["bert.encoder.layer.2.attention.output.LayerNorm.weight"].role == "norm"
    assert bert["bert.encoder.layer.2.intermediate.dense.weight"].role == "mlp"


def test_tied_head_is_one_tensor_with_two_names():
    anatomy = find_anatomy(build_tiny("gemma"))
    assert anatomy.tied_groups() == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert anatomy.aliases("model.embed_tokens.weight") == ["model.embed_tokens.weight", "lm_head.weight"]
    assert "lm_head.weight" not in anatomy.tensors


class ExpertBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Linear(8, 8)
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(12))  # longer than the block list
        self.norm = nn.LayerNorm(8)


class ToyMoE(nn.Module):
    """Experts as a ModuleList (as older MoE code does), with more experts than layers."""

    def __init__(self, layers=3):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.layers = nn.ModuleList(ExpertBlock() for _ in range(layers))
        self.final_norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 30)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.out


def test_expert_lists_inside_blocks_are_not_the_block_stack():
    anatomy = find_anatomy(ToyMoE())
    assert anatomy.blocks_path == "layers"
    assert anatomy.num_layers == 3
    entries = {e.name: e for e in anatomy.entries}
    assert entries["layers.1.experts.2.weight"].layer == 1
    assert entries["layers.1.experts.2.weight"].expert
    assert entries["final_norm.weight"].part == "norm"
    assert entries["out.weight"].part == "head"


def test_model_without_blocks_has_no_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    anatomy = find_anatomy(model)
    assert anatomy.num_layers == 0 and anatomy.blocks_path is None
    assert anatomy.total_params == sum(p.numel() for p in model.parameters())


def test_dims_for_memory_estimate():
    dims = find_anatomy(build_tiny("gpt2")).dims
    assert (dims.hidden_size, dims.num_heads, dims.vocab_size) == (32, 4, 128)
    assert torch.is_tensor(build_tiny("gpt2").transformer.wte.weight)


TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            vocab_size=128)


def _vlm(kind: str) -> torch.nn.Module:
    """Tiny vision-language models whose vision tower has more blocks (5) than the language stack (2)."""
    import transformers as T

    torch.manual_seed(0)
    if kind == "qwen2_vl":
        return T.Qwen2VLForConditionalGeneration(T.Qwen2VLConfig(
            text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
            vision_config=dict(depth=5, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=2,
                               spatial_merge_size=1, temporal_patch_size=1, in_channels=3)))
    return T.LlavaForConditionalGeneration(T.LlavaConfig(
        text_config=T.LlamaConfig(**TEXT), image_token_index=100,
        vision_config=T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                                         image_size=8, patch_size=4)))


@pytest.mark.parametrize("kind", ["qwen2_vl", "llava"])
def test_a_vision_language_model_is_planned_on_its_language_stack(kind):
    from freezetune import FreezePlan, resolve

    model = _vlm(kind)
    anatomy = find_anatomy(model)
    assert anatomy.blocks_path == "model.language_model.layers" and anatomy.num_layers == 2
    parts = {e.name: e.part for e in anatomy.entries}
    assert parts["lm_head.weight"] == "head" and parts["model.language_model.norm.weight"] == "norm"
    vision = [name for name in parts if "visual" in name or "vision" in name or "projector" in name]
    assert vision and {parts[n] for n in vision} == {"embeddings"}  # they feed the language stack
    resolved = resolve(FreezePlan.parse("freeze bottom 50%"), anatomy)
    trained = resolved.trainable_names()
    assert any(n.startswith("model.language_model.layers.1.") for n in trained)
    assert not any(n.startswith("model.language_model.layers.0.") for n in trained)
    assert not any(n in vision for n in trained) and "lm_head.weight" in trained


def test_a_hybrid_stack_with_mixed_block_classes_is_one_ordered_stack():
    import transformers as T

    from freezetune import FreezePlan, resolve

    torch.manual_seed(0)
    model = T.JambaForCausalLM(T.JambaConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=128, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
        num_experts=2, mamba_d_state=4, mamba_dt_rank=4, mamba_expand=2))
    assert {type(layer).__name__ for layer in model.model.layers} == {"JambaMambaDecoderLayer", "JambaAttentionDecoderLayer"}
    anatomy = find_anatomy(model)
    assert anatomy.blocks_path == "model.layers" and anatomy.num_layers == 4
    roles = {(e.layer, e.role) for e in anatomy.entries if e.part == "block"}
    assert {(0, "attn"), (1, "attn"), (1, "mlp")} <= roles  # the Mamba mixer is block 0's sequence mixer
    assert any(e.expert for e in anatomy.entries if e.layer == 1)
    trained = resolve(FreezePlan.parse("train attn@top 2"), anatomy).trainable_names()
    assert trained and {n.split(".")[2] for n in trained} == {"2", "3"}
    assert any(".mamba." in n for n in trained) and any(".self_attn." in n for n in trained)
