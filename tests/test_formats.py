import pytest
import yaml

from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.formats import render
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import resolve

from conftest import build_tiny
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
        # 0 layers: only freeze_extra_modules train
        ("train head", {"freeze_trainable_layers": 0, "freeze_trainable_modules": "all", "freeze_extra_modules": "lm_head"}),
        ("freeze all; train head", {"freeze_trainable_layers": 0, "freeze_trainable_modules": "all", "freeze_extra_modules": "lm_head"}),
        # use_llama_pro with N layers trains every (L/N)-th layer ending at the top
        ("train layers 1::2", {"freeze_trainable_layers": 2, "freeze_trainable_modules": "all", "use_llama_pro": True}),
        ("train layers 1,3", {"freeze_trainable_layers": 2, "freeze_trainable_modules": "all", "use_llama_pro": True}),
        ("train mlp@layers 1::2", {"freeze_trainable_layers": 2, "freeze_trainable_modules": "mlp", "use_llama_pro": True}),
    ],
)
def test_llama_factory_arguments(text, expected):
    assert emit(build_tiny("llama"), text, "llama-factory") == {"finetuning_type": "freeze", **expected}


@pytest.mark.parametrize(
    "model, text, message",
    [
        ("llama", "train layers 0,2", "or every k-th layer ending at the top, and this plan trains layers 0,2"),
        # its freeze_extra_modules "norm" is a substring of every block's layernorm names
        ("llama", "train top 1; train norm", "would also train 6 tensors the plan freezes (e.g. model.layers.0.input_layernorm.weight)"),
        ("llama", "freeze all; train norm", "because 'norm' is also a substring of 8 tensor names inside the blocks"),
        ("llama", "freeze bottom 75%", "the nearest plan it can express is 'freeze bottom 75%; freeze norm' (freeze_trainable_layers: 1)"),
        # the plan's own 'train norm' is dropped, not undone by a 'freeze norm' after it
        ("llama", "train norm; train top 2", "the nearest plan it can express is 'train top 2' (freeze_trainable_layers: 2)"),
        ("llama", "train mlp@top 2; train attn@top 1", "trains mlp vs mlp+self_attn in different layers"),
        ("llama", "freeze all; train re:model.layers.3.mlp.up_proj.weight", "trains part of 'mlp' in layer 3"),
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


def test_llama_pro_and_head_only_selections_match_the_plan_in_simulation():
    """The emitted arguments, run through LLaMA-Factory's own selection rules, train exactly the plan."""
    from freezetune.plans.formats import _canonical_names, _llama_factory_select

    for text in ("train layers 1::2", "train layers 3", "train head", "train mlp@layers 1::2; train head"):
        resolved = resolve(FreezePlan.parse(text), find_anatomy(build_tiny("llama")))
        out = yaml.safe_load(render(resolved, "llama-factory"))
        extras = out.get("freeze_extra_modules", "").split(",") if out.get("freeze_extra_modules") else []
        selected = _llama_factory_select(_canonical_names(resolved), 4, out["freeze_trainable_layers"],
                                         out["freeze_trainable_modules"].split(","), extras, out.get("use_llama_pro", False))
        assert selected == set(resolved.trainable_names()), text


def test_plan_json_names_the_trainable_tied_aliases():
    from freezetune.plans.preview import describe

    from conftest import build_tiny as tiny

    model = tiny("gpt2")  # GPT-2 ties lm_head.weight to transformer.wte.weight
    info = describe(resolve(FreezePlan.parse("train head"), find_anatomy(model)), "gpt2")
    assert info["trainable_aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert "transformer.wte.weight" in info["trainable_names"]
