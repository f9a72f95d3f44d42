import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freezetune.errors import PlanError
from freezetune.plans.language import FreezePlan
from freezetune.plans.selectors import (
    BLOCK_COMPONENTS,
    OUTER_COMPONENTS,
    All,
    Component,
    Depth,
    Layers,
    Regex,
    Rule,
)


def parse_one(text):
    (rule,) = FreezePlan.parse(text).rules
    return rule


@pytest.mark.parametrize(
    "text, expected",
    [
        ("freeze all", Rule("freeze", All())),
        ("freeze bottom 75%", Rule("freeze", Depth("bottom", 75, True))),
        ("train top 8", Rule("train", Depth("top", 8))),
        ("freeze layers 0-21", Rule("freeze", Layers(items=((0, 21),)))),
        ("freeze layers 3, 5,7", Rule("freeze", Layers(items=(3, 5, 7)))),
        ("freeze layers -1", Rule("freeze", Layers(items=(-1,)))),
        ("train layers -8:", Rule("train", Layers(slice=(-8, None, None)))),
        ("train layers ::2", Rule("train", Layers(slice=(None, None, 2)))),
        ("train mlp@layers 20-29", Rule("train", Component("mlp", Layers(items=((20, 29),))))),
        ("train attn@top 4", Rule("train", Component("attn", Depth("top", 4)))),
        ("freeze norms", Rule("freeze", Component("norms"))),
        ("train head", Rule("train", Component("head"))),
        ("Freeze  BOTTOM 2", Rule("freeze", Depth("bottom", 2))),
        (r"train re:model\.layers\.(2[0-9])\..*", Rule("train", Regex(r"model\.layers\.(2[0-9])\..*"))),
    ],
)
def test_parse_rules(text, expected):
    assert parse_one(text) == expected


def test_rules_split_on_semicolons_and_newlines_and_skip_comments():
    plan = FreezePlan.parse("freeze bottom 75%; train mlp@layers 20-29\n# keep the head\n\nfreeze head")
    assert plan.to_list() == ["freeze bottom 75%", "train mlp@layers 20-29", "freeze head"]
    assert [r.column for r in plan.rules] == [1, 20, 60]
    assert not plan.starts_frozen
    assert FreezePlan.parse("train top 2").starts_frozen


def test_list_form_and_files(tmp_path):
    plan = FreezePlan.from_list(["freeze bottom 75%", {"train": "mlp@layers 20-29"}])
    assert plan == FreezePlan.parse("freeze bottom 75%; train mlp@layers 20-29")
    yaml_file = tmp_path / "plan.yaml"
    yaml_file.write_text("- freeze bottom 75%\n- train: mlp@layers 20-29\n")
    assert FreezePlan.from_argument(str(yaml_file)) == plan
    json_file = tmp_path / "plan.json"
    json_file.write_text('{"plan": ["freeze bottom 75%", "train mlp@layers 20-29"]}')
    assert FreezePlan.load(json_file) == plan
    text_file = tmp_path / "plan.txt"
    text_file.write_text("freeze bottom 75%\ntrain mlp@layers 20-29\n")
    assert FreezePlan.from_argument(str(text_file)) == plan


# Every parse error, with the message a user sees.
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty plan"),
        ("  ;\n# only a comment", "empty plan"),
        ("thaw bottom 2", "plan rule 1 'thaw bottom 2' at column 1: a rule starts with 'freeze' or 'train', not 'thaw'"),
        ("freeze", "plan rule 1 'freeze' at column 1: 'freeze' needs a selector"),
        ("freeze all; freeze middle", "plan rule 2 'freeze middle' at column 13: unknown selector 'middle'"),
        ("freeze bottom 0", "'bottom 0' selects no blocks"),
        ("freeze top 120%", "a percentage is at most 100%"),
        ("freeze layers 5-3", "range 5-3 runs backwards"),
        ("freeze layers 1,x", "'x' is not an index or a range"),
        ("freeze layers 1:2:0", "a slice step cannot be zero"),
        ("freeze layers 1:2:3:4", "is not a Python slice"),
        ("train head@top 2", "'head' lies outside the blocks, so it takes no '@' depth"),
        ("train ffn@top 2", "unknown component 'ffn' before '@'"),
        ("train mlp@middle", "after '@' comes a depth like 'layers 20-29'"),
        ("train re:", "'re:' needs a regular expression"),
        ("train re:model.(", "invalid regular expression 'model.('"),
        # rules joined as in prose, which the selector error ("unknown selector 'bottom 75%, train top 1'") left to guess
        ("freeze bottom 75%, train top 1", "plan rule 1 'freeze bottom 75%, train top 1' at column 1: two rules in one: "
                                           "separate them with ';' ('freeze bottom 75%; train top 1')"),
        ("freeze layers 0-21 and Train head", "('freeze layers 0-21; Train head')"),
    ],
)
def test_parse_errors_name_the_rule(text, message):
    with pytest.raises(PlanError) as error:
        FreezePlan.parse(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_list_and_file_errors(tmp_path):
    with pytest.raises(PlanError, match="rule 2 must be a string"):
        FreezePlan.from_list(["freeze all", 3])
    with pytest.raises(PlanError, match="holds more than one rule"):
        FreezePlan.from_list(["freeze all; train head"])
    # two keys in one mapping are two rules in one item; a mapping of one key is a rule
    with pytest.raises(PlanError, match=r"rule 2 must be .* got \{'train': 'head', 'freeze': 'norm'\}; a mapping takes one key"):
        FreezePlan.from_list(["freeze all", {"train": "head", "freeze": "norm"}])
    assert FreezePlan.from_list(["freeze all", {"train": "top 2"}]).render() == "freeze all; train top 2"
    with pytest.raises(PlanError, match="expected a list of rules"):
        FreezePlan.from_list({"freeze": "all", "train": "head"})
    with pytest.raises(PlanError, match="plan file .*missing.yaml does not exist"):
        FreezePlan.from_argument(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- freeze all\n  - : [\n")
    with pytest.raises(PlanError, match="bad.yaml line 2: not valid YAML: "):
        FreezePlan.load(bad)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("freeze all\nfreeze sideways\n")
    with pytest.raises(PlanError, match=r"plan file .*wrong.txt: plan rule 2 'freeze sideways' at column 12"):
        FreezePlan.load(wrong)


# --- property tests: render -> parse is the identity on plans -------------------------

counts = st.integers(min_value=1, max_value=200)
depths = st.one_of(
    st.builds(Depth, st.sampled_from(["bottom", "top"]), counts, st.just(False)),
    st.builds(Depth, st.sampled_from(["bottom", "top"]), st.integers(1, 100), st.just(True)),
)
ranges = st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda ab: (min(ab), max(ab)))
layer_items = st.lists(st.one_of(st.integers(-60, 60), ranges), min_size=1, max_size=5).map(tuple)
maybe_int = st.one_of(st.none(), st.integers(-60, 60))
steps = st.one_of(st.none(), st.integers(-5, 5).filter(lambda s: s != 0))
layers = st.one_of(
    st.builds(Layers, items=layer_items),
    st.builds(lambda a, b, c: Layers(slice=(a, b, c)), maybe_int, maybe_int, steps),
)
fragments = st.sampled_from(["model", r"\.", "layers", r"\d+", ".*", "(attn|mlp)", "weight", "[0-9]", "_proj", "?"])
regexes = st.lists(fragments, min_size=1, max_size=6).map("".join).filter(lambda p: _compiles(p)).map(Regex)
selectors = st.one_of(
    st.just(All()),
    depths,
    layers,
    st.builds(Component, st.sampled_from(OUTER_COMPONENTS)),
    st.builds(Component, st.sampled_from(BLOCK_COMPONENTS), st.one_of(st.none(), depths, layers)),
    regexes,
)
rules = st.builds(Rule, st.sampled_from(["freeze", "train"]), selectors)
plans = st.lists(rules, min_size=1, max_size=6).map(lambda rs: FreezePlan(tuple(rs)))


def _compiles(pattern):
    import re

    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(plans)
def test_render_then_parse_gives_the_same_plan(plan):
    assert FreezePlan.parse(plan.render()) == plan
    assert FreezePlan.from_list(plan.to_list()) == plan
    assert FreezePlan.parse("\n".join(plan.to_list())) == plan
