"""What a crash, a kill or a damaged disk leaves behind, and how a run comes back from it."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main
from freezetune.runs.durable import remove_leftovers, staged_dir
from freezetune.training.export import EXPORT_MARK

from helpers import losses
from test_train_cli import assert_same_run, cli, train_args, wait_for


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the tensor data, past the header: the file still parses
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated tensors": lambda c: _truncate(c / "trainable.safetensors"),
    "zero-byte tensors": lambda c: (c / "trainable.safetensors").write_bytes(b""),
    "a flipped bit in tensor data": lambda c: _flip_last_byte(c / "trainable.safetensors"),
    "missing optimizer state": lambda c: (c / "optimizer.safetensors").unlink(),
    "truncated optimizer state": lambda c: _truncate(c / "optimizer.safetensors"),
    "garbage state.json": lambda c: (c / "state.json").write_text("garbage"),
    "truncated random state": lambda c: _truncate(c / "rng-0.safetensors"),
}


def as_if_killed_after_its_last_checkpoint(run):
    """A finished run is never resumed: make it one whose process died after writing its last checkpoint."""
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (run / "trainable.safetensors").unlink()


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_resumes(damage, world, capsys):
    run = world / "run"
    reference, final = losses(run), load_file(str(run / "trainable.safetensors"))
    newest = run / "checkpoints" / "step-000006"
    as_if_killed_after_its_last_checkpoint(run)
    DAMAGES[damage](newest)
    damaged = {p.name: p.read_bytes() for p in newest.iterdir()}
    with open(run / "metrics.jsonl", "a") as metrics:  # and a line the kill cut in half
        metrics.write('{"step": 7, "lo')
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged (" in err and "set aside as damaged-step-000006" in err
    assert "metrics.jsonl line 7 is half-written" in err
    assert "from step-000004 (step 4 of 6)" in err
    aside = run / "checkpoints" / "damaged-step-000006"  # kept as it was, for a person to look at
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == damaged
    assert losses(run) == reference
    resumed = load_file(str(run / "trainable.safetensors"))
    assert all(torch.equal(resumed[k], final[k]) for k in final)


def test_staging_leftovers_are_cleaned_at_the_next_start(world, capsys):
    run = world / "run"
    as_if_killed_after_its_last_checkpoint(run)
    (run / "checkpoints" / ".step-000008.partial-x1y2").mkdir()
    (run / "checkpoints" / ".step-000008.partial-x1y2" / "trainable.safetensors").write_bytes(b"half")
    (run / "checkpoints" / ".rng-0.safetensors.step-8.partial").write_bytes(b"half")
    (run / ".manifest.json.4242.partial").write_text("{")
    assert main(["train", "--resume", str(run)]) == 0
    left = [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if ".partial" in p.name]
    assert left == []


def test_a_swap_interrupted_between_its_two_renames_keeps_the_old_folder(tmp_path):
    target = tmp_path / "step-000004"
    target.mkdir()
    (target / "weights").write_text("old")
    # a writer died after moving the old folder aside and before publishing the new one
    target.rename(tmp_path / ".step-000004.old.partial-77")
    remove_leftovers(tmp_path)
    assert (target / "weights").read_text() == "old"
    with pytest.raises(RuntimeError):
        with staged_dir(target, replace=True) as staging:
            (staging / "weights").write_text("new")
            raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["step-000004"]
    with staged_dir(target, replace=True) as staging:
        (staging / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["step-000004"]


def _newest_step(run) -> int:
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step-*")] if (run / "checkpoints").is_dir() else []
    return max(steps, default=0)


def test_sigkill_at_random_moments_then_resume_gives_the_same_losses(tiny_chat_model_dir, order_data, tmp_path):
    """Five kills at random times while a run saves every step, each followed by a resume."""
    steps = ["--max-steps", "120", "--save-every", "1"]
    assert main(train_args(tiny_chat_model_dir, order_data, tmp_path / "straight", *steps)) == 0
    victim, chance = tmp_path / "killed", random.Random(20261129)
    process = cli(*train_args(tiny_chat_model_dir, order_data, victim, *steps))
    for _ in range(5):
        # each process first saves one checkpoint of its own, so the kill lands amid training and saving
        reached = _newest_step(victim)
        deadline = time.time() + 120
        while _newest_step(victim) <= reached:
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.01)
        time.sleep(chance.uniform(0.0, 0.25))
        assert process.poll() is None, "the run finished before its kill; give it more steps"
        process.send_signal(signal.SIGKILL)
        process.wait()
        process = cli("train", "--resume", str(victim))
    out, err = process.communicate()
    assert process.returncode == 0, err
    assert_same_run(victim, tmp_path / "straight")


def test_ctrl_c_twice_exits_130_without_a_traceback_and_the_run_resumes(tiny_chat_model_dir, order_data, tmp_path):
    out_dir = tmp_path / "twice"
    process = cli(*train_args(tiny_chat_model_dir, order_data, out_dir, "--max-steps", "200", "--save-every", "3"))
    wait_for(out_dir / "checkpoints" / "step-000003" / "state.json", process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)  # the second one does not wait for the checkpoint
    _, err = process.communicate(timeout=60)
    assert process.returncode in (0, 130) and "Traceback" not in err, err
    resumed = cli("train", "--resume", str(out_dir))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming" in err and "finished 200 steps" in out, err


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tiny_chat_model_dir, order_data, tmp_path):
    process = cli(*train_args(tiny_chat_model_dir, order_data, tmp_path / "early", "--max-steps", "5"))
    time.sleep(0.5)  # still importing torch and transformers
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err and "interrupted" in err, err


def test_export_force_replaces_an_earlier_export_only(world, capsys):
    out = world / "merged"
    assert main(["export", str(world / "run"), "--out", str(out)]) == 0
    marker = json.loads((out / EXPORT_MARK).read_text())
    assert marker["run"] == str((world / "run").resolve()) and marker["base_model"]["sha256"]
    assert main(["export", str(world / "run"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--out {out} holds an earlier export; pass --force to replace it (files you added there are kept), "
        "or choose a new folder")  # it was "already holds files ... or pass --force", as of any folder
    (out / "model.safetensors").write_bytes(b"stale")
    assert main(["export", str(world / "run"), "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != b"stale"
    assert [p.name for p in world.iterdir() if ".partial" in p.name] == []
    capsys.readouterr()
    # what the user added to the export is theirs: a --force replaces only the files the marker lists
    (out / "NOTES.md").write_text("measured on our eval set")
    (out / "eval" / "scores.csv").parent.mkdir()
    (out / "eval" / "scores.csv").write_text("a,1\n")
    assert main(["export", str(world / "run"), "--out", str(out), "--force"]) == 0
    assert (out / "NOTES.md").read_text() == "measured on our eval set" and (out / "eval" / "scores.csv").read_text() == "a,1\n"
    assert "kept what you had added there: NOTES.md, eval/scores.csv" in capsys.readouterr().out
    assert "NOTES.md" not in json.loads((out / EXPORT_MARK).read_text())["files"]
    # a file of the user's that the new export would overwrite: refused, nothing replaced
    listed = json.loads((out / EXPORT_MARK).read_text())
    (out / EXPORT_MARK).write_text(json.dumps({**listed, "files": [f for f in listed["files"] if f != "config.json"]}))
    assert main(["export", str(world / "run"), "--out", str(out), "--force"]) == 2
    assert "config.json was not written by the earlier export" in capsys.readouterr().err
    assert (out / "NOTES.md").is_file() and (out / "config.json").is_file()


def test_plan_previews_a_model_train_will_not_take(tmp_path, capsys):
    import transformers as T

    T.BertForMaskedLM(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=64)).save_pretrained(tmp_path / "bert")
    assert main(["plan", str(tmp_path / "bert"), "freeze bottom 50%"]) == 0
    assert "train, compare and export will not take this model: BertForMaskedLM is a masked LM" in capsys.readouterr().out
