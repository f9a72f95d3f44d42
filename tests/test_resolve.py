import pytest
from hypothesis import given, settings

from freezetune.errors import FreezetuneError, PlanError
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import apply_plan, resolve

from conftest import build_tiny
from test_plan_grammar import plans

LLAMA_BLOCK = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
]
GPT2_BLOCK = [
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
]
MIXTRAL_MLP = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
BERT_ATTN = [
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias", "attention.output.dense.weight", "attention.output.dense.bias",
]


def llama(layers, suffixes=LLAMA_BLOCK):
    return {f"model.layers.{i}.{s}" for i in layers for s in suffixes}


def gpt2(layers, suffixes=GPT2_BLOCK):
    return {f"transformer.h.{i}.{s}" for i in layers for s in suffixes}


# (architecture, plan) -> the trainable tensors, written out by hand
CASES = [
    ("llama", "freeze bottom 75%", llama([3]) | {"model.norm.weight", "lm_head.weight"}),
    ("llama", "freeze bottom 50%; freeze head; freeze norm", llama([2, 3])),
    ("llama", "train top 1", llama([3])),
    ("llama", "train layers 0,2", llama([0, 2])),
    ("llama", "train layers -2:", llama([2, 3])),
    ("llama", "train layers ::2", llama([0, 2])),
    ("llama", "train layers 1-2", llama([1, 2])),
    ("llama", "train mlp@layers 2-3", llama([2, 3], LLAMA_BLOCK[4:7])),
    ("llama", "train attn@top 1; train norm", llama([3], LLAMA_BLOCK[:4]) | {"model.norm.weight"}),
    ("llama", "train norms", llama(range(4), LLAMA_BLOCK[7:])),
    ("llama", "train embeddings", {"model.embed_tokens.weight"}),
    ("llama", "freeze all; train re:model\\.layers\\.1\\.mlp\\..*", llama([1], LLAMA_BLOCK[4:7])),
    ("llama", "freeze layers 0-3", {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}),
    ("llama", "train top 50%; freeze mlp", llama([2, 3], LLAMA_BLOCK[:4] + LLAMA_BLOCK[7:])),
    # tied head: the head follows the embeddings it is tied to (one tensor)
    ("gpt2", "freeze bottom 75%", gpt2([3]) | {"transformer.ln_f.weight", "transformer.ln_f.bias"}),
    ("gpt2", "train top 1; train head", gpt2([3]) | {"transformer.wte.weight"}),
    ("gpt2", "train embeddings", {"transformer.wte.weight", "transformer.wpe.weight"}),
    ("gpt2", "train bottom 1; freeze re:transformer\\.wpe\\.weight", gpt2([0]) | {"transformer.wte.weight"}),
    # MoE: layer 1 is an integer index, never a substring of another name
    ("mixtral", "train mlp@layers 1", {f"model.layers.1.{s}" for s in MIXTRAL_MLP}),
    ("bert", "train attn@layers 3", {f"bert.encoder.layer.3.{s}" for s in BERT_ATTN}),
    ("bert", "train norm; train top 1", {f"bert.encoder.layer.3.{s}" for s in BERT_ATTN} | {
        f"bert.encoder.layer.3.{s}" for s in [
            "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias", "intermediate.dense.weight",
            "intermediate.dense.bias", "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight",
            "output.LayerNorm.bias"]}),
]


@pytest.mark.parametrize("arch, text, expected", CASES)
def test_plan_resolves_to_exact_names(arch, text, expected):
    if text == "train norm; train top 1":  # BERT has no final norm: the rule must say so
        with pytest.raises(PlanError, match="plan rule 1 'train norm' at column 1: matches no parameter"):
            resolve(FreezePlan.parse(text), find_anatomy(build_tiny(arch)))
        return
    resolved = resolve(FreezePlan.parse(text), find_anatomy(build_tiny(arch)))
    assert set(resolved.trainable_names()) == expected


def test_layer_table_lowest_block_and_counts():
    model = build_tiny("llama")
    resolved = resolve(FreezePlan.parse("freeze bottom 50%; train mlp@layers 1"), find_anatomy(model))
    rows = resolved.layer_rows()
    assert [r["state"] for r in rows] == ["frozen", "partial", "trainable", "trainable"]
    assert rows[2]["trainable_params"] == sum(p.numel() for p in model.model.layers[2].parameters())
    assert resolved.lowest_trainable_layer == 1
    assert resolved.backward_depth == 3
    assert not resolved.embeddings_trainable
    assert resolved.trainable_params == sum(
        p.numel() for n, p in model.named_parameters() if n in set(resolved.trainable_names())
    )


def test_tied_weights_print_a_notice():
    resolved = resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(build_tiny("gpt2")))
    assert resolved.notices == (
        "transformer.wte.weight and lm_head.weight are one tied tensor; plan rule 1 'freeze bottom 75%' at column 1 "
        "names only transformer.wte.weight, so lm_head.weight is frozen too",
    )
    head = next(r for r in resolved.part_rows() if r["part"] == "head")
    assert head["state"] == "frozen" and head["tied_to"] == ["transformer.wte.weight"]
    # a rule naming both names (all) leaves nothing to explain
    assert resolve(FreezePlan.parse("freeze all; train top 1"), find_anatomy(build_tiny("gpt2"))).notices == ()


def test_untied_model_has_no_notice():
    assert resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(build_tiny("llama"))).notices == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ("freeze layers 4", "plan rule 1 'freeze layers 4' at column 1: layer 4 is out of range: the model has 4 blocks (0-3)"),
        ("freeze layers -5", "layer -5 is out of range"),
        ("freeze top 5", "top 5: out of range, the model has 4 blocks"),
        ("freeze bottom 10%", "bottom 10% of 4 blocks is 0 blocks"),
        ("train layers 10:", "'layers 10:' selects no blocks of 4"),
        ("freeze all; train re:.*experts.*", "plan rule 2 'train re:.*experts.*' at column 13: matches no parameter of LlamaForCausalLM"),
        ("freeze bottom 2; freeze top 2; freeze norm; freeze head", "plan rule 4 'freeze head' at column 45: the plan leaves nothing trainable"),
        ("train mlp; freeze mlp", "plan rule 2 'freeze mlp' at column 12: the plan leaves nothing trainable"),
    ],
)
def test_resolution_errors_name_the_rule(text, message):
    with pytest.raises(PlanError) as error:
        resolve(FreezePlan.parse(text), find_anatomy(build_tiny("llama")))
    assert message in str(error.value)


def test_model_without_blocks_suggests_regex_rules():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(PlanError, match="cannot find the transformer blocks of Sequential .*'re:REGEX' rules"):
        resolve(FreezePlan.parse("freeze bottom 1"), find_anatomy(model))
    resolved = resolve(FreezePlan.parse("freeze re:0\\..*"), find_anatomy(model))
    assert resolved.trainable_names() == ["1.weight", "1.bias"]


def test_apply_plan_sets_requires_grad_and_is_idempotent():
    model = build_tiny("gpt2")
    resolved = resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(model))
    for _ in range(2):
        apply_plan(model, resolved)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == set(resolved.trainable_names())
    assert not model.lm_head.weight.requires_grad


def test_apply_plan_refuses_another_model():
    resolved = resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(build_tiny("gpt2")))
    with pytest.raises(FreezetuneError, match="resolved on a different model"):
        apply_plan(build_tiny("llama"), resolved)


LLAMA_ANATOMY = find_anatomy(build_tiny("llama"))
LLAMA_TENSORS = set(LLAMA_ANATOMY.tensors)


@settings(max_examples=300, deadline=None)
@given(plans)
def test_resolution_never_names_a_parameter_outside_the_model(plan):
    try:
        resolved = resolve(plan, LLAMA_ANATOMY)
    except PlanError as error:
        assert str(error).startswith("plan rule ")
        return
    assert resolved.trainable and set(resolved.trainable_names()) <= LLAMA_TENSORS
    assert sum(r["trainable_params"] for r in resolved.layer_rows()) <= resolved.trainable_params


def test_a_plan_that_trains_base_weights_beside_lora_adapters_says_so():
    """'freeze bottom 50%' on a peft model trained the top blocks' own weights beside their adapters, silently."""
    from peft import LoraConfig, get_peft_model

    from freezetune.hf import freeze
    from freezetune.plans.selectors import ADAPTERS_ONLY

    model = get_peft_model(build_tiny("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    anatomy = find_anatomy(model)
    (notice,) = resolve(FreezePlan.parse("freeze bottom 50%"), anatomy).notices
    assert notice.startswith("the model has LoRA adapters, and the plan also trains 20 of the base model's own tensors ("
                             ) and notice.endswith(f"the adapters alone are '{ADAPTERS_ONLY}'")
    assert resolve(FreezePlan.parse(ADAPTERS_ONLY), anatomy).notices == ()
    assert resolve(FreezePlan.parse("freeze bottom 50%"), find_anatomy(build_tiny("llama"))).notices == ()
    # inside a Trainer script nobody reads a preview: freeze() warns
    with pytest.warns(UserWarning, match="freeze\\(\\): the model has LoRA adapters, and the plan also trains 20"):
        freeze(model, "freeze bottom 50%").remove()


def test_checkpointing_under_a_plan_that_trains_no_block_is_said_not_ignored():
    """TRL turns checkpointing on by default; under 'train norm' nothing is recomputed (the CLI refuses the flag)."""
    import warnings

    from freezetune.hf import freeze

    model = build_tiny("llama")
    idle = "freeze\\(\\): gradient checkpointing has nothing to recompute: the plan 'freeze all; train norm' trains no block"
    with pytest.warns(UserWarning, match=idle):
        freeze(model, "freeze all; train norm", gradient_checkpointing=True).remove()
    handle = freeze(model, "freeze all; train norm")
    with pytest.warns(UserWarning, match=idle):  # a Trainer turning it on later
        model.gradient_checkpointing_enable()
    handle.remove()
    with warnings.catch_warnings():  # a plan that trains a block: checkpointing recomputes it, no warning
        warnings.simplefilter("error")
        freeze(model, "freeze bottom 50%", gradient_checkpointing=True).remove()
