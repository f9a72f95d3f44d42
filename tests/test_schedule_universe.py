"""What a schedule moves through: every block when no plan is given, never a schedule that cannot vary
(nor one its run is too short to vary), and LISA with the embeddings and head kept out (freeze-outside)."""

import json

import pytest
from transformers import AutoModelForCausalLM

from freezetune.cli.commands import main
from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import resolve
from freezetune.plans.schedule import Schedule

from conftest import build_tiny
from helpers import metric_records, train_argv


def schedule_args(model_dir, order_data, out, *extra):
    return train_argv(model_dir, order_data, out, *extra, lr="1e-2", warmup=1, eval_generate=0)


def universe(plan: str):
    return resolve(FreezePlan.parse(plan), find_anatomy(build_tiny("llama")))


def test_without_a_plan_a_schedule_draws_from_every_block(tiny_chat_model_dir, order_data, tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(tiny_chat_model_dir, order_data, out, "--max-steps", "12", "--schedule", "lisa layers=2 every=2",
                           lr="1e-3", eval_generate=0, prefix_cache="off")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"] == ["train all"] and manifest["schedule"] == "lisa layers=2 every=2"
    drawn = {block for record in metric_records(out) if "loss" in record for block in record["active_blocks"]}
    # under the default 'freeze bottom 75%' the 4-block model would train block 3 only, whatever the draw
    assert drawn == {0, 1, 2, 3}


@pytest.mark.parametrize("plan, schedule, message", [
    ("freeze bottom 50%", "lisa layers=2 every=2",
     "layers=2 of the plan's 2 trainable blocks leaves nothing to draw: every period would train all 2"),
    ("freeze bottom 50%", "gradual every=2 start=2",
     "start=2 of the plan's 2 trainable blocks leaves nothing to unfreeze: from step 0 it would train all 2"),
    ("train all; freeze embeddings; freeze head", "lisa layers=1 every=2 freeze-outside",
     "already trains neither the embeddings nor the head, so freeze-outside would change nothing"),
])
def test_a_schedule_that_cannot_vary_is_refused_with_the_reason(plan, schedule, message):
    with pytest.raises(FreezetuneError, match=message):
        Schedule.parse(schedule).check(universe(plan))


def test_the_refusal_reaches_train_as_one_line(tiny_chat_model_dir, order_data, tmp_path, capsys):
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "run", "--max-steps", "2", "--plan", "freeze bottom 50%",
                           "--schedule", "lisa layers=2 every=2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("freezetune train: error: --schedule 'lisa layers=2 every=2': layers=2 of the plan's 2")
    assert not (tmp_path / "run").exists()


def test_freeze_outside_keeps_the_embeddings_and_head_frozen_in_every_period():
    plain, outside = Schedule.parse("lisa layers=1 every=2"), Schedule.parse("lisa layers=1 every=2 freeze-outside")
    assert outside.render() == "lisa layers=1 every=2 freeze-outside" and Schedule.parse(outside.render()) == outside
    space = universe("train all")
    anatomy = space.anatomy
    outer = {e.tensor for e in anatomy.entries if e.part in ("embeddings", "head")}
    for phase in range(4):
        with_outer, without = plain.plan_at(space, phase, 0), outside.plan_at(space, phase, 0)
        assert outer <= with_outer.trainable and not outer & without.trainable
        # the same block drawn either way; only the outside differs
        assert with_outer.trainable - outer == without.trainable
    assert not outer & outside.peak_plan(space).trainable
    with pytest.raises(FreezetuneError, match="'freeze-outside=1' is not one of lisa's settings .*freeze-outside"):
        Schedule.parse("lisa layers=1 every=2 freeze-outside=1")


def test_gradient_sampling_draws_in_proportion_to_the_scores():
    space = universe("train all")
    lisa = Schedule.parse("lisa layers=1 every=2 sample=gradient")
    assert lisa.render() == "lisa layers=1 every=2 sample=gradient" and Schedule.parse(lisa.render()) == lisa

    def share(scores, block=3):
        return sum(lisa.active(space, phase, 0, scores) == [block] for phase in range(600)) / 600

    assert share({0: 1.0, 1: 1.0, 2: 1.0, 3: 7.0}) == pytest.approx(0.7, abs=0.06)
    assert share({3: 7.0}) == pytest.approx(0.25, abs=0.06)  # blocks not yet scored count as the mean of those that are
    assert share({0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}) < 0.01  # a block whose gradient vanished is all but never drawn
    assert share(None) == pytest.approx(0.25, abs=0.06)  # nothing scored yet: equal chances
    with pytest.raises(FreezetuneError, match="sample must be uniform or gradient, got 'loss'"):
        Schedule.parse("lisa layers=1 every=2 sample=loss")


def test_gradient_sampled_lisa_scores_the_blocks_it_trains_and_checkpoints_the_scores(tiny_chat_model_dir, order_data, tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(tiny_chat_model_dir, order_data, out, "--max-steps", "8", "--save-every", "4", "--plan", "train all",
                           "--schedule", "lisa layers=1 every=2 sample=gradient", lr="1e-3", eval_generate=0,
                           prefix_cache="off")) == 0
    drawn = [r["active_blocks"] for r in metric_records(out) if "loss" in r]
    state = json.loads((out / "checkpoints" / "step-000004" / "state.json").read_text())["schedule"]
    assert state["text"] == "lisa layers=1 every=2 sample=gradient"
    assert {int(b) for b in state["scores"]} == {b for blocks in drawn[:4] for b in blocks}
    assert all(score > 0 for score in state["scores"].values())


def test_a_trainer_callback_refuses_gradient_sampling():
    from freezetune.hf import FreezeCallback, freeze

    with pytest.raises(FreezetuneError, match="drawing by gradient scores needs the gradients of every step"):
        FreezeCallback(freeze(build_tiny("llama"), "train all"), "lisa layers=1 every=2 sample=gradient")


def test_a_run_too_short_for_its_schedule_is_refused_and_one_that_stops_unfreezing_says_so(
        tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "short"
    # 4 steps, every=4: one phase, the plan's top block alone, run as if it were a schedule
    code = main(schedule_args(tiny_chat_model_dir, order_data, out, "--plan", "train all", "--max-steps", "4",
                     "--schedule", "gradual every=4"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == ("freezetune train: error: --schedule 'gradual every=4 start=1 step=1': the run has 4 "
                                 "steps, so it never leaves its first phase (every=4) and trains the same blocks "
                                 "throughout; give every=3 or less, or more steps")
    assert not out.exists()  # refused before the run folder
    assert main(schedule_args(tiny_chat_model_dir, order_data, out, "--max-steps", "4", "--schedule", "lisa layers=1 every=9")) == 2
    assert "never leaves its first phase (every=9)" in capsys.readouterr().err and not out.exists()
    # 4 steps, every=2: blocks 3, then 2-3; blocks 0-1 and the embeddings never unfreeze (the head, not tied to
    # them, trains throughout)
    assert main(schedule_args(tiny_chat_model_dir, order_data, out, "--plan", "train all", "--max-steps", "4",
                     "--schedule", "gradual every=2")) == 0
    notice = ("notice: --schedule 'gradual every=2 start=1 step=1': the run's 4 steps end before the unfreezing "
              "reaches the plan's lowest block: blocks 0-1 and the embeddings never train (the whole plan "
              "would train from step 7)")
    printed = capsys.readouterr()
    assert notice in printed.out + printed.err
    assert [r["active_blocks"] for r in metric_records(out) if "loss" in r] == [[3], [3], [2, 3], [2, 3]]
    # a run long enough to unfreeze the whole plan says nothing
    anatomy = find_anatomy(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir))
    universe = resolve(FreezePlan.parse("train all"), anatomy)
    assert Schedule.parse("gradual every=2").check_length(universe, 7) is None
    assert "block 0 and the embeddings never train (" in Schedule.parse("gradual every=2").check_length(universe, 6)
    blocks_only = resolve(FreezePlan.parse("freeze embeddings"), anatomy)
    assert "block 0 never trains (" in Schedule.parse("gradual every=2").check_length(blocks_only, 6)
    assert Schedule.parse("lisa layers=1 every=2").check_length(universe, 3) is None


def test_compare_refuses_a_schedule_its_search_runs_cannot_vary(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    base = ["compare", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data",
            str(order_data[1]), "--max-steps", "8", "--batch-size", "4", "--seq-len", "64", "--out", str(out)]
    # searched: 4-step search runs would choose the rate for the first phase alone
    assert main(base + ["--strategy", "gradual every=4"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("give every=3 or less, or more --search-steps")
    assert main(base + ["--strategy", "lisa layers=1 every=8 lr=1e-3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("give every=7 or less, or more --max-steps")
    assert not (out / "runs").exists()  # before anything trained


@pytest.mark.parametrize("text, key", [("lisa layers=1 every=2 every=3", "every"), ("gradual every=2 start=1 start=2", "start"),
                                       ("lisa layers=1 every=2 freeze-outside freeze-outside", "freeze-outside"),
                                       ("lisa layers=1 every=2 sample=gradient sample=uniform", "sample")])
def test_a_setting_given_twice_is_refused(text, key):
    # the last value won without a word: 'every=2 every=3' ran every=3
    with pytest.raises(FreezetuneError, match=f"^--schedule '{text}': {key} is given twice$"):
        Schedule.parse(text)
