import pytest
import torch
from torch import nn

from conftest import build_tiny
from freezetune.plans.anatomy import find_anatomy

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
