"""One writer per folder: a second `train` or `compare` on a folder in use is refused with the holder's
pid, and a holder that was killed leaves a lock the next run takes over, saying so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from freezetune.cli.commands import main

from test_compare import compare_args
from test_refusals import train_args

HOLD = "import sys, time; from freezetune.runs.lock import lock_folder; l = lock_folder(sys.argv[1], 'test'); print('held', flush=True); time.sleep(120)"


def hold(folder):
    """Another process holding ``folder``'s lock, as a running train or compare does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_train_on_a_running_run_is_refused_with_the_holders_pid(tiny_chat_model_dir, order_data, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "freezetune",
                              *train_args(tiny_chat_model_dir, order_data, run, "--max-steps", "100000")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints").is_dir():  # training, past its first checkpoint
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "freezetune", "train", "--resume", str(run)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        error = [line for line in second.stderr.splitlines() if "error" in line]
        assert len(error) == 1 and f"in use by another freezetune process (pid {first.pid}," in error[0], second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.kill()
        first.wait()
    # killed: its lock goes with it, and the resume takes over and says from whom
    resumed = subprocess.Popen([sys.executable, "-m", "freezetune", "train", "--resume", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in resumed.stderr:  # its notes come before its first step
            said.append(line)
            if "took over the lock" in line or "before:" in line:
                break
    finally:
        resumed.kill()
        resumed.wait()
    assert any(f"took over the lock of pid {first.pid}" in line and "no longer running" in line for line in said), said[-5:]


def test_a_new_run_into_a_folder_in_use_is_refused(tiny_chat_model_dir, order_data, tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        assert main(train_args(tiny_chat_model_dir, order_data, run)) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in capsys.readouterr().err
    assert not (run / "manifest.json").exists()  # refused before it wrote anything


def test_a_second_compare_on_one_folder_is_refused(tiny_chat_model_dir, order_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    holder = hold(out)
    try:
        assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%")) == 2
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert f"in use by another freezetune process (pid {holder.pid}," in err and "one comparison at a time" in err
    assert sorted(p.name for p in out.iterdir()) == ["freezetune.lock"]
    # the holder is gone: the same compare now runs, and says whose lock it took over
    assert main(compare_args(tiny_chat_model_dir, order_data, out, "full", "freeze bottom 50%")) == 0
    assert f"took over the lock of pid {holder.pid}" in capsys.readouterr().err
