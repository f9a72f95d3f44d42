import pytest
import yaml

from conftest import build_tiny
from freezetune.anatomy import find_anatomy
from freezetune.errors import FreezetuneError
from freezetune.formats import render
from freezetune.plan import FreezePlan
from freezetune.resolve import resolve
from test_anatomy import ToyMoE


def emit(model, text, fmt):
    return yaml.safe_load(render(resolve(FreezePlan.parse(text), find_anatomy(model)), fmt))


def test_axolotl_lists_each_trainable_tensor_anchored():
    out = emit(build_tiny("llama"), "freeze all; train attn@top 1; train norm", "axolotl")
    assert out == {"unfrozen_parameters": [
        "^model.layers.3.self_attn.q_proj.weight$", "^model.layers.3.self_attn.k_proj.weight$",
        "^model.layers.3.self_attn.v_proj.weight$", "^model.layers.3.self_attn.o_proj.weight$",
        "^model.norm.weight$",
    ]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train top 2", {"freeze_trainable_layers": 2, "freeze_trainable_modules": "all"}),
        ("train mlp@bottom 1", {"freeze_trainable_layers": -1, "freeze_trainable_modules": "mlp"}),
        ("train top 1; train head", {"freeze_trainable_layers": 1, "freeze_trainable_modules": "all", "freeze_extra_modules": "lm_head"}),
        ("train attn@top 2", {"freeze_trainable_layers": 2, "freeze_trainable_modules": "self_attn"}),
    ],
)
def test_llama_factory_arguments(text, expected):
    assert emit(build_tiny("llama"), text, "llama-factory") == {"finetuning_type": "freeze", **expected}


@pytest.mark.parametrize(
    "model, text, message",
    [
        ("llama", "train layers 0,2", "trains only a contiguous run of top or bottom layers, and this plan trains layers 0,2"),
        # its freeze_extra_modules "norm" is a substring of every block's layernorm names
        ("llama", "train top 1; train norm", "would also train 6 tensors the plan freezes (e.g. model.layers.0.input_layernorm.weight)"),
        ("llama", "train mlp@top 2; train attn@top 1", "trains mlp vs mlp+self_attn in different layers"),
        ("llama", "freeze all; train re:model.layers.3.mlp.up_proj.weight", "trains part of 'mlp' in layer 3"),
        ("llama", "freeze all; train head", "its freeze mode trains at least one layer"),
    ],
)
def test_llama_factory_refuses_what_it_cannot_express(model, text, message):
    with pytest.raises(FreezetuneError, match="cannot express this plan") as error:
        emit(build_tiny(model), text, "llama-factory")
    assert message in str(error.value)


def test_llama_factory_substring_bug_on_expert_lists_is_caught():
    # LLaMA-Factory matches ".2." as a substring: it would also train experts.2 of every layer
    with pytest.raises(FreezetuneError, match=r"also train \d+ tensors the plan freezes \(e.g. layers.0.experts.2.bias\)"):
        emit(ToyMoE(layers=3), "train top 1", "llama-factory")
    # the same plan is exact in freezetune and in Axolotl's anchored names
    names = emit(ToyMoE(layers=3), "train top 1", "axolotl")["unfrozen_parameters"]
    assert all(n.startswith("^layers.2.") for n in names) and len(names) == 2 + 24 + 2
