"""Schedules: gradual unfreezing and LISA on the one loop, through the retarget seam."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from freezetune import FreezePlan, find_anatomy, resolve
from freezetune.cli.commands import main
from freezetune.errors import FreezetuneError
from freezetune.plans.schedule import Schedule

from helpers import metric_records, train_argv


def records(run_dir):
    return [record for record in metric_records(run_dir) if "loss" in record]


def args(model_dir, order_data, out, *extra):
    return train_argv(model_dir, order_data, out, *extra, lr="1e-2", warmup=1, eval_generate=0)


def test_gradual_unfreezes_downward_every_n_steps_until_the_plan(tiny_chat_model_dir, order_data, tmp_path, monkeypatch):
    out = tmp_path / "gradual"
    parsed = []  # the run parses its schedule text once: validation, session, loop and cache choice share it
    monkeypatch.setattr(Schedule, "parse", classmethod(lambda cls, text, real=Schedule.parse: parsed.append(text) or real(text)))
    assert main(args(tiny_chat_model_dir, order_data, out, "--plan", "freeze layers 0", "--max-steps", "8",
                     "--schedule", "gradual every=2 start=1 step=1", "--prefix-cache", "memory")) == 0
    active = [r["active_blocks"] for r in records(out)]
    assert active == [[3], [3], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]  # block 0: the plan freezes it
    assert parsed == ["gradual every=2 start=1 step=1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schedule"] == "gradual every=2 start=1 step=1"
    trained = load_file(str(out / "trainable.safetensors"))
    assert {n.split(".")[2] for n in trained if n.startswith("model.layers.")} == {"1", "2", "3"}


def test_lisa_draws_seeded_blocks_and_drops_the_moments_of_those_that_rest(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.config.run import TrainConfig
    from freezetune.training.loop import TrainingLoop
    from freezetune.training.session import open_session

    config = TrainConfig(model=str(tiny_chat_model_dir), data=str(order_data[0]), eval_data=str(order_data[1]),
                         out=str(tmp_path / "lisa"), batch_size=4, seq_len=64, lr=1e-2, warmup=1, max_steps=12,
                         eval_generate=0, plan="train all; freeze embeddings", schedule="lisa layers=1 every=2",
                         prefix_cache="off")
    trainer = TrainingLoop(open_session(config), log=lambda message: None, progress=False)
    optimizer, params = trainer.lr_scheduler.optimizer, dict(trainer.model.named_parameters())
    seen = []
    for step in range(12):
        trainer.trainable.advance(step, trainer.retarget)
        block = trainer._step(step, None)["active_blocks"]  # what metrics.jsonl records for the step
        assert len(block) == 1
        seen.append(block[0])
        # moments exist for the active block and the parts outside the blocks only: memory of one block
        with_state = {n for n, p in params.items() if p in optimizer.state}
        in_blocks = {int(n.split(".")[2]) for n in with_state if n.startswith("model.layers.")}
        assert in_blocks == {block[0]}
        assert "lm_head.weight" in with_state and "model.embed_tokens.weight" not in with_state
    assert seen[0::2] == seen[1::2]  # a draw holds for its period
    draws = seen[0::2]
    assert len(set(draws)) > 1  # and periods draw anew
    assert draws == [Schedule.parse("lisa layers=1 every=2").active(trainer.trainable.universe, p, 0)[0] for p in range(6)]
    other = Schedule.parse("lisa layers=1 every=2")
    assert [other.active(trainer.trainable.universe, p, 1)[0] for p in range(6)] != draws  # the seed decides them


def test_schedule_text_and_fit_errors_are_one_line(tiny_chat_model_dir, order_data, tmp_path, capsys):
    for text, expected in [("cosine every=3", "unknown schedule 'cosine'"), ("lisa every=3", "lisa needs layers=N"),
                           ("gradual every=0", "every must be a whole number of at least 1"),
                           ("gradual every=2 depth=3", "'depth=3' is not one of gradual's settings")]:
        with pytest.raises(FreezetuneError, match=expected):
            Schedule.parse(text)
    out = tmp_path / "never"
    code = main(args(tiny_chat_model_dir, order_data, out, "--plan", "freeze bottom 50%", "--max-steps", "2",
                     "--schedule", "lisa layers=3 every=2"))
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: transformers' loading bar
    assert code == 2 and err.startswith("freezetune train: error: --schedule 'lisa layers=3 every=2': layers=3, but the plan "
                                        "trains only 2 blocks")
    assert not out.exists()  # refused before the run folder
    code = main(args(tiny_chat_model_dir, order_data, out, "--plan", "train head", "--max-steps", "2",
                     "--schedule", "gradual every=2"))
    assert code == 2 and "trains no block" in capsys.readouterr().err and not out.exists()
    code = main(args(tiny_chat_model_dir, order_data, out, "--max-steps", "2", "--schedule", "gradual every=2", "--fsdp",
                     "--num-processes", "2"))
    assert code == 2 and "laid out once for a fixed trainable set" in capsys.readouterr().err and not out.exists()


def same_training(run, reference):
    """Equal up to float rounding: a replayed row's prefix output was computed in a batch of another
    padded length, which moves the last bits; a stale replay moves the loss in the second decimal."""
    assert [r["loss"] for r in records(run)] == pytest.approx([r["loss"] for r in records(reference)], rel=2e-5, abs=2e-6)
    trained, expected = load_file(str(run / "trainable.safetensors")), load_file(str(reference / "trainable.safetensors"))
    assert trained.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cache", ["memory", "disk"])
@pytest.mark.parametrize("schedule", ["lisa layers=1 every=2", "lisa layers=1 every=2 sample=gradient",
                                      "gradual every=4 start=1 step=1"])
def test_a_schedule_with_a_prefix_cache_trains_as_without_one(tiny_chat_model_dir, order_data, tmp_path, schedule, cache,
                                                              capsys):
    # LISA comes back to depths whose blocks below it trained since: outputs cached there before are stale
    steps = ["--plan", "train all; freeze embeddings", "--schedule", schedule, "--max-steps", "48", "--lr", "3e-3",
             "--cache-dir", str(tmp_path / "cache")]
    assert main(args(tiny_chat_model_dir, order_data, tmp_path / "off", *steps, "--prefix-cache", "off")) == 0
    assert main(args(tiny_chat_model_dir, order_data, tmp_path / cache, *steps, "--prefix-cache", cache)) == 0
    same_training(tmp_path / cache, tmp_path / "off")
    err = capsys.readouterr().err
    if schedule.endswith("sample=gradient"):  # the draws are not known beforehand: said as a rule
        assert "draws follow the gradients, so where a prefix comes to hold a block trained earlier" in err
    elif schedule.startswith("lisa"):  # said, not silent
        assert "train below a frozen prefix they return to" in err
    else:  # gradual's prefix below the trained blocks never trains: the cache is used throughout
        assert "train below" not in err and f"prefix cache: {cache}" in err


@pytest.mark.parametrize("schedule", ["lisa layers=2 every=3", "lisa layers=2 every=3 sample=gradient", "gradual every=3 start=1 step=1"])
def test_a_killed_schedule_resumes_exactly_mid_phase(tiny_chat_model_dir, order_data, tmp_path, schedule):
    # the disk cache is saved with each checkpoint, so the resumed run replays what the killed one had cached
    # (a memory cache is rebuilt on resume: equal to float rounding, since a row's prefix output was computed
    # inside a batch of another padded length)
    steps = ["--plan", "train all; freeze embeddings", "--schedule", schedule, "--max-steps", "40", "--save-every", "5",
             "--lr", "3e-3", "--prefix-cache", "disk", "--layer-lr-decay", "0.8"]
    reference, victim = tmp_path / "straight", tmp_path / "killed"
    assert main(args(tiny_chat_model_dir, order_data, reference, *steps, "--cache-dir", str(tmp_path / "c1"))) == 0
    process = subprocess.Popen([sys.executable, "-m", "freezetune", *args(tiny_chat_model_dir, order_data, victim, *steps,
                                                                          "--cache-dir", str(tmp_path / "c2"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while not (victim / "checkpoints" / "step-000010" / "state.json").exists():  # step 10: inside the phase of 9-11
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads((victim / "checkpoints" / "step-000010" / "state.json").read_text())
    assert state["schedule"]["phase"] == 3 and state["schedule"]["text"] == Schedule.parse(schedule).render()
    # no --cache-dir: a resumed run keeps its own cache folder
    resumed = subprocess.run([sys.executable, "-m", "freezetune", "train", "--resume", str(victim)], capture_output=True,
                             text=True, timeout=300)
    assert str(tmp_path / "c2") in resumed.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["loss"] for r in records(victim)] == [r["loss"] for r in records(reference)]
    no_cache = tmp_path / "no-cache"
    assert main(args(tiny_chat_model_dir, order_data, no_cache, *[a for a in steps if a not in ("--prefix-cache", "disk")],
                "--prefix-cache", "off")) == 0
    same_training(victim, no_cache)
    assert [r["active_blocks"] for r in records(victim)] == [r["active_blocks"] for r in records(reference)]
    trained, expected = load_file(str(victim / "trainable.safetensors")), load_file(str(reference / "trainable.safetensors"))
    assert trained.keys() == expected.keys()
    for name in expected:
        assert torch.equal(trained[name], expected[name]), name


def test_export_merges_every_tensor_a_schedule_trained(tiny_chat_model_dir, order_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lisa"
    assert main(args(tiny_chat_model_dir, order_data, out, "--plan", "train all; freeze embeddings", "--max-steps", "12",
                     "--schedule", "lisa layers=1 every=2", "--prefix-cache", "off")) == 0
    last = records(out)[-1]["active_blocks"]
    ever = {b for r in records(out) for b in r["active_blocks"]}
    assert ever - set(last), "the test needs a block that trained and then rested"
    trained = load_file(str(out / "trainable.safetensors"))
    assert {int(n.split(".")[2]) for n in trained if n.startswith("model.layers.")} == ever
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["trained_names"]) == sorted(trained)
    assert main(["export", str(out), "--out", str(tmp_path / "hf")]) == 0
    exported = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "hf").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).named_parameters())
    for name, tensor in trained.items():
        assert torch.equal(exported[name].detach(), tensor), name
        assert not torch.equal(base[name].detach(), tensor) or name.endswith("bias"), name


def test_two_processes_follow_a_lisa_schedule_as_one_does(tiny_chat_model_dir, order_data, tmp_path):
    steps = ["--plan", "train all; freeze embeddings", "--schedule", "lisa layers=1 every=2", "--max-steps", "8",
             "--prefix-cache", "off"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(args(tiny_chat_model_dir, order_data, single, *steps)) == 0
    result = subprocess.run([sys.executable, "-m", "freezetune", *args(tiny_chat_model_dir, order_data, double, *steps,
                                                                       "--num-processes", "2")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["active_blocks"] for r in records(double)] == [r["active_blocks"] for r in records(single)]
    assert [r["loss"] for r in records(double)] == pytest.approx([r["loss"] for r in records(single)], rel=1e-4)
    trained, reference = load_file(str(double / "trainable.safetensors")), load_file(str(single / "trainable.safetensors"))
    assert trained.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-3, atol=1e-5)


def test_schedules_are_compare_strategies(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from freezetune.comparison.strategies import parse_strategy

    lisa = parse_strategy("lisa layers=1 every=2 over freeze embeddings lr=1e-3")
    # parsed once: the strategy holds the schedule as an object, rendered to text only for the workers
    assert (lisa.kind, lisa.plan, lisa.schedule.render(), lisa.lr) == ("plan", "freeze embeddings", "lisa layers=1 every=2", 1e-3)
    assert parse_strategy("gradual every=2").schedule.render() == "gradual every=2 start=1 step=1"
    with pytest.raises(FreezetuneError, match="--strategy 'lisa every=2': --schedule 'lisa every=2': lisa needs layers=N"):
        parse_strategy("lisa every=2")
    out = tmp_path / "cmp"
    base = ["compare", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
            "--max-steps", "4", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "2", "--out", str(out),
            "--seeds", "1", "--lr-plan", "1e-3"]
    assert main(base + ["--strategy", "lisa layers=5 every=2"]) == 2
    assert "layers=5, but the plan trains only 4 blocks" in capsys.readouterr().err
    assert main(base + ["--strategy", "gradual every=2 start=2", "--strategy", "lisa layers=1 every=2"]) == 0
    rows = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert rows.keys() == {"gradual every=2 start=2", "lisa layers=1 every=2"}
    assert all(r["status"] == "finished" for r in rows.values())
    run = out / "runs" / "lisa-layers-1-every-2" / "seed-0"
    assert json.loads((run / "manifest.json").read_text())["schedule"] == "lisa layers=1 every=2"
    assert all(len(r["active_blocks"]) == 1 for r in records(run))
    gradual = records(out / "runs" / "gradual-every-2-start-2" / "seed-0")
    assert [r["active_blocks"] for r in gradual] == [[2, 3], [2, 3], [1, 2, 3], [1, 2, 3]]


def test_plan_previews_a_schedules_phases_and_its_peak(tiny_chat_model_dir, capsys):
    model = str(tiny_chat_model_dir)
    assert main(["plan", model, "train all", "--schedule", "gradual every=5 start=1 step=2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    phases = info["schedule"]["phases"]
    assert [p["active_blocks"] for p in phases] == [[3], [1, 2, 3], [0, 1, 2, 3]]
    assert [p["steps"] for p in phases] == [[0, 4], [5, 9], [10, None]]
    assert phases[-1]["memory_estimate_bytes"] == info["memory_estimate_bytes"]["total"]  # complete: the whole plan
    assert [p["memory_estimate_bytes"] for p in phases] == sorted(p["memory_estimate_bytes"] for p in phases)
    assert info["schedule"]["peak_memory_estimate_bytes"] == info["memory_estimate_bytes"]

    assert main(["plan", model, "train all; freeze embeddings", "--schedule", "lisa layers=2 every=3", "--max-steps", "12",
                 "--seed", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    lisa = Schedule.parse("lisa layers=2 every=3")
    phases = info["schedule"]["phases"]
    assert sum(p["steps"][1] - p["steps"][0] + 1 for p in phases) == 12
    universe = resolve(FreezePlan.parse("train all; freeze embeddings"),
                       find_anatomy(__import__("transformers").AutoModelForCausalLM.from_pretrained(model)))
    assert [b for p in phases for b in [p["active_blocks"]] * ((p["steps"][1] - p["steps"][0] + 1) // 3)] == \
        [lisa.active(universe, period, 5) for period in range(4)]
    # the peak is the worst draw: the lowest block (the longest backward) and one more
    assert info["schedule"]["peak_active_blocks"][0] == 0 and len(info["schedule"]["peak_active_blocks"]) == 2
    assert max(p["memory_estimate_bytes"] for p in phases) <= info["schedule"]["peak_memory_estimate_bytes"]["total"]
    assert info["schedule"]["peak_memory_estimate_bytes"]["total"] < info["full_finetune_memory_estimate_bytes"]["total"]

    assert main(["plan", model, "train all", "--schedule", "lisa layers=2 every=3"]) == 0
    text = capsys.readouterr().out
    assert "schedule: lisa layers=2 every=3 (LISA's draws for --seed 0)" in text
    # with --max-steps, the preview says what train would of the run's length
    assert main(["plan", model, "train all", "--schedule", "gradual every=4", "--max-steps", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notices"] == [
        "train will refuse this: --schedule 'gradual every=4 start=1 step=1': the run has 4 steps, so it never leaves "
        "its first phase (every=4) and trains the same blocks throughout; give every=3 or less, or more steps"]
    assert main(["plan", model, "train all", "--schedule", "gradual every=2", "--max-steps", "4", "--json"]) == 0
    assert "blocks 0-1 and the embeddings never train" in json.loads(capsys.readouterr().out)["notices"][0]
    assert "peak training memory estimate over the phases:" in text
