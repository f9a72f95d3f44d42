"""Two processes on CPU (torchrun, gloo, DDP) against one, with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from freezetune.cli.commands import main

from helpers import losses, train_argv


def args(model_dir, order_data, out, *extra):
    return train_argv(model_dir, order_data, out, *extra, lr="1e-2", warmup=1, eval_generate=0, plan="freeze bottom 50%",
                      prefix_cache="off")


def freezetune(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "freezetune", *argv], capture_output=True, text=True, timeout=300, **kwargs)


def test_two_processes_match_one_and_write_one_checkpoint(tiny_chat_model_dir, order_data, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(args(tiny_chat_model_dir, order_data, single, "--max-steps", "6", "--save-every", "3")) == 0
    result = freezetune(*args(tiny_chat_model_dir, order_data, double, "--max-steps", "6", "--save-every", "3",
                              "--num-processes", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    # records of unequal length: the loss is weighed by each process's token share, as one process sees it
    assert losses(double) == pytest.approx(losses(single), rel=1e-4)
    trained, reference = load_file(str(double / "trainable.safetensors")), load_file(str(single / "trainable.safetensors"))
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-3, atol=1e-5)
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    # every process keeps its own random state, listed with its checksum
    files = json.loads((double / "checkpoints" / "step-000006" / "state.json").read_text())["files"]
    assert {"rng-0.safetensors", "rng-1.safetensors"} <= set(files)
    assert len((double / "metrics.jsonl").read_text().splitlines()) == 6  # written once, not once per process
    assert result.stdout.count("finished 6 steps") == 1


def test_a_two_process_run_resumes_with_one_process(tiny_chat_model_dir, order_data, tmp_path):
    reference, victim = tmp_path / "straight", tmp_path / "killed"
    # a small learning rate keeps the float noise of 1 vs 2 processes (thread counts, all-reduce order) small
    steps = ["--max-steps", "150", "--save-every", "5", "--lr", "1e-3"]
    assert main(args(tiny_chat_model_dir, order_data, reference, *steps)) == 0
    process = subprocess.Popen([sys.executable, "-m", "freezetune", *args(tiny_chat_model_dir, order_data, victim, *steps,
                                                                          "--num-processes", "2")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while not (victim / "checkpoints" / "step-000010" / "state.json").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = freezetune("train", "--resume", str(victim))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    assert losses(victim) == pytest.approx(losses(reference), rel=1e-3)


def test_a_global_batch_that_does_not_split_is_refused(tiny_chat_model_dir, order_data, tmp_path, capsys):
    assert main(args(tiny_chat_model_dir, order_data, tmp_path / "odd", "--batch-size", "5", "--num-processes", "2")) == 2
    assert "--batch-size 5 does not divide among 2 processes" in capsys.readouterr().err


def test_accelerate_launch_with_the_shipped_cpu_config(tiny_chat_model_dir, order_data, tmp_path):
    from pathlib import Path

    config = Path(__file__).parent.parent / "configs" / "ddp.yaml"
    out = tmp_path / "launched"
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                               "-m", "freezetune", *args(tiny_chat_model_dir, order_data, out, "--max-steps", "3")],
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["processes"] == 2
    assert len(losses(out)) == 3



def test_each_process_caches_only_its_own_shard(tiny_chat_model_dir, order_data, tmp_path):
    from freezetune.data.order import BatchOrder

    cache_dir, out = tmp_path / "cache", tmp_path / "cached"
    run = args(tiny_chat_model_dir, order_data, out, "--epochs", "3", "--num-processes", "2")
    run[run.index("--prefix-cache") + 1] = "disk"
    result = freezetune(*run, "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "for about 14 examples per process" in result.stderr  # 20 train / 2 + 4 held-out
    folders = sorted((cache_dir / "prefix").iterdir())
    assert [f.name.split("-")[-1] for f in folders] == ["rank0of2", "rank1of2"]
    order = BatchOrder(20, 4, seed=0)
    keys = [[k for shard in json.loads((f / "index.json").read_text())["shards"].values() for k in shard["keys"]]
            for f in folders]
    cached = [{int(k.split(":")[1].split("@")[0]) for k in ks if k.startswith("train:")} for ks in keys]
    assert not cached[0] & cached[1]
    for rank in (0, 1):
        # 3 epochs of 5 batches: each process ran (and cached) nothing but its shard, and all of it
        assert cached[rank] == set(order.shard(rank, 2))


@pytest.mark.parametrize("plans", ["same", "differ"])
def test_every_process_checks_that_all_resolved_the_same_plan(plans):
    from pathlib import Path

    probe = Path(__file__).parent / "plan_probe.py"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(probe), plans], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    if plans == "same":
        assert lines == ["rank 0: same", "rank 1: same"]
    else:  # both stop, before any step: neither waits for a gradient all-reduce the other never joins
        assert [line[:14] for line in lines] == ["rank 0: error:", "rank 1: error:"]
        assert all("the processes resolved different plans" in line for line in lines)
