"""`freezetune train` as a user runs it, including kills, resumes and bad input (export: test_export_cli.py)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main

from helpers import losses, train_argv


def train_args(model_dir, order_data, out, *extra):
    return train_argv(model_dir, order_data, out, *extra, lr="1e-2", warmup=1, eval_generate=2, max_new_tokens=8,
                      prefix_cache="off")


def cli(*argv):
    return subprocess.Popen([sys.executable, "-m", "freezetune", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_run(run_dir, reference_dir):
    """The same losses and bit-identical trained tensors as the uninterrupted run."""
    assert losses(run_dir) == losses(reference_dir)
    final, reference = load_file(str(run_dir / "trainable.safetensors")), load_file(str(reference_dir / "trainable.safetensors"))
    assert sorted(final) == sorted(reference) and all(torch.equal(final[k], reference[k]) for k in reference)


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


def test_sigkill_mid_training_then_resume_gives_the_same_losses(tiny_chat_model_dir, order_data, tmp_path):
    steps = ["--max-steps", "300", "--save-every", "10"]
    assert main(train_args(tiny_chat_model_dir, order_data, tmp_path / "straight", *steps)) == 0
    victim = tmp_path / "killed"
    process = cli(*train_args(tiny_chat_model_dir, order_data, victim, *steps))
    wait_for(victim / "checkpoints" / "step-000020" / "state.json", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (victim / "trainable.safetensors").exists()
    resumed = cli("train", "--resume", str(victim))
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "resuming" in err and "finished 300 steps" in out
    assert_same_run(victim, tmp_path / "straight")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_chat_model_dir, order_data, tmp_path):
    out_dir = tmp_path / "term"
    process = cli(*train_args(tiny_chat_model_dir, order_data, out_dir, "--max-steps", "100000", "--save-every", "0"))
    wait_for(out_dir / "metrics.jsonl", process)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "SIGTERM received" in err and "interrupted at step" in out
    step = int(out.split("interrupted at step ")[1].split(":")[0])
    assert (out_dir / "checkpoints" / f"step-{step:06d}" / "state.json").is_file()


def test_yaml_config_with_flag_overrides(tiny_chat_model_dir, order_data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_chat_model_dir}\ndata: {order_data[0]}\neval-data: {order_data[1]}\nmax_steps: 2\n"
                      f"batch_size: 4\nseq_len: 64\nlr: 0.01\nplan: train top 1\nout: {tmp_path / 'from-yaml'}\n")
    assert main(["train", "--config", str(config), "--max-steps", "3", "--eval-generate", "0"]) == 0
    manifest = json.loads((tmp_path / "from-yaml" / "manifest.json").read_text())
    assert manifest["config"]["max_steps"] == 3 and manifest["config"]["plan"] == "train top 1"
    assert manifest["config"]["lr"] == 0.01


def test_bad_train_inputs_are_one_line_with_exit_2(tiny_chat_model_dir, order_data, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("max_steps: 2\nlearning_rate: 3\n")
    typed = tmp_path / "typed.yaml"
    typed.write_text("batch_size: many\n")
    twice = tmp_path / "twice.yaml"
    twice.write_text("max_steps: 2\nlr: 0.1\nmax-steps: 3\n")  # YAML alone would keep the 3
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_steps: 2\nplan: [train top 1\n")
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    cases = [
        (["train", "--model", str(tiny_chat_model_dir), "--data", str(tmp_path / "none.jsonl")], "data file"),
        (["train", "--model", str(tiny_chat_model_dir), "--data", str(empty), "--out", str(tmp_path / "e")], "no usable SFT example"),
        (["train", "--resume", str(plain_dir)], "is not a freezetune run: no manifest.json"),
        (["train", "--config", str(bad_yaml)], "bad.yaml line 2: unknown option 'learning_rate'"),
        (["train", "--config", str(typed)], "typed.yaml line 1: 'batch_size' must be int, got 'many'"),
        (["train", "--config", str(twice)], "twice.yaml line 3: 'max-steps' is already given on line 1"),
        (["train", "--config", str(broken)], "broken.yaml line 3: not valid YAML: expected ',' or ']'"),
        (["train", "--config", str(tmp_path / "missing.yaml")], "config file"),
        (["train", "--model", str(tiny_chat_model_dir), "--plan", "freeze sideways"], "plan rule 1 'freeze sideways'"),
        (["train", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["export", str(plain_dir), "--out", str(tmp_path / "o")], "is not a freezetune run"),
        # a mistyped run folder is missing, not a folder without a manifest
        (["train", "--resume", str(tmp_path / "typo")], f"{tmp_path / 'typo'} does not exist"),
        (["report", str(tmp_path / "typo"), "--out", str(tmp_path / "r")], f"{tmp_path / 'typo'} does not exist"),
    ]
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and message in lines[0], (argv, err)


def test_resume_needs_a_checkpoint_and_keeps_its_config(tiny_chat_model_dir, order_data, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--lr", "0.5"]) == 2
    assert "--lr 0.5 differs from the resumed run, which had 0.01; a resumed run keeps its config" in capsys.readouterr().err
    # a default is said as what it was, not as the config's None
    assert main(["train", "--resume", str(run_dir), "--plan", "train all"]) == 2
    assert "--plan 'train all' differs from the resumed run, which had the default plan 'freeze bottom 75%'" in \
        capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--schedule", "lisa layers=1 every=2"]) == 2
    assert "--schedule 'lisa layers=1 every=2' differs from the resumed run, which had none;" in capsys.readouterr().err
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "2")) == 2
    # finished: --resume would be refused too ("nothing is left to continue"), so it is not suggested
    assert capsys.readouterr().err.strip().endswith(f"{run_dir} holds a finished run; choose another --out")
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "holds no checkpoint to continue from" in capsys.readouterr().err
    # a folder whose run died before any checkpoint can be started over
    (run_dir / "trainable.safetensors").unlink()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert main(train_args(tiny_chat_model_dir, order_data, run_dir, "--max-steps", "2")) == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.integration
def test_train_on_the_embedded_model_with_the_built_in_task(tmp_path, capsys):
    """The main job's path on the real model: chat template, tied head, prefix cache, generation."""
    out = tmp_path / "smol"
    code = main(["train", "--max-steps", "2", "--batch-size", "2", "--eval-generate", "2", "--max-new-tokens", "8",
                 "--show-generations", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "built-in dispatch task, 600 train / 200 held-out" in captured.err
    assert "prefix cache: memory, output of the 22 frozen blocks" in captured.err
    assert "lm_head.weight is frozen too" in captured.err
    assert "finished 2 steps" in captured.out
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["before"]["exact_match_examples"] == 2
    assert evaluation["after"]["eval_loss"] < evaluation["before"]["eval_loss"]
    saved = load_file(str(out / "trainable.safetensors"))
    assert len(saved) == 8 * 9 + 1 and "model.embed_tokens.weight" not in saved


def test_a_missing_tracker_is_an_error_not_a_silent_skip(tiny_chat_model_dir, order_data, tmp_path, capsys):
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed here")
    assert main(train_args(tiny_chat_model_dir, order_data, tmp_path / "tb", "--max-steps", "1", "--log-with", "tensorboard")) == 2
    assert "--log-with tensorboard needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()  # refused before the run folder was made


def test_fewer_examples_than_one_batch_is_refused_before_the_run_folder(tiny_chat_model_dir, order_data, tmp_path, capsys):
    assert main(train_args(tiny_chat_model_dir, order_data, tmp_path / "small", "--batch-size", "32")) == 2
    assert "20 training examples are fewer than one batch (--batch-size 32)" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()


def test_a_warmup_and_an_eval_interval_the_run_never_reaches_are_said(tiny_chat_model_dir, order_data, tmp_path, capsys):
    def notices(*flags):
        out = tmp_path / "-".join(flags)
        assert main(train_argv(tiny_chat_model_dir, order_data, out, "--max-steps", "4", *flags, eval_generate=0)) == 0
        printed = capsys.readouterr()
        return [line for line in (printed.out + printed.err).splitlines() if line.startswith("notice: --")]

    # warmup 4 of 4 steps: the last step's rate is 3/4 of --lr; evaluating every 4th step: only the final one
    assert notices("--warmup", "4", "--eval-every", "4", "--lr", "1e-3") == [
        "notice: --warmup 4 is not shorter than the run's 4 steps: the rate never reaches --lr 0.001",
        "notice: --eval-every 4: the run has 4 steps, so it evaluates only before and after training"]
    assert notices("--warmup", "3", "--eval-every", "3") == []  # step 4 trains at --lr, step 3 evaluates
    from freezetune.config.run import TrainConfig

    assert TrainConfig(warmup=2, eval_every=1, lr=1e-3).unreached(1) == [  # it was "the run's 1 steps"
        "--warmup 2 is not shorter than the run's 1 step: the rate never reaches --lr 0.001",
        "--eval-every 1: the run has 1 step, so it evaluates only before and after training"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 trains on a GPU")
def test_fp16_without_a_gpu_is_refused_before_the_run_folder(tiny_chat_model_dir, order_data, tmp_path, capsys):
    # accelerate runs no fp16 autocast on a CPU: the frozen fp16 weights met fp32 activations in a traceback
    out = tmp_path / "fp16"
    assert main(train_argv(tiny_chat_model_dir, order_data, out, "--precision", "fp16", "--max-steps", "2")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "freezetune train: error: --precision fp16 needs a GPU (a CPU has no fp16 autocast): use bf16 or fp32")
    assert not out.exists()


def test_the_examples_an_epoch_leaves_out_are_said(tiny_chat_model_dir, order_data, tmp_path, capsys):
    # 20 examples in batches of 6: three full batches an epoch, and 2 examples wait for another (data/order.py)
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "a", "--max-steps", "0", "--epochs", "1",
                           batch_size=6, eval_generate=0)) == 0
    printed = capsys.readouterr()
    assert "batches: 20 training examples in batches of 6 leave 2 out of each epoch (drawn anew each epoch)" in (
        printed.out + printed.err)
    # a run that ends within its first epoch leaves nothing out that it would have reached
    assert main(train_argv(tiny_chat_model_dir, order_data, tmp_path / "b", "--max-steps", "2", batch_size=6,
                           eval_generate=0)) == 0
    printed = capsys.readouterr()
    assert "batches:" not in printed.out + printed.err
