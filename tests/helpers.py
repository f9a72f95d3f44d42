"""What many tests share: the argv of a small `freezetune train`, and reading a run's metrics."""

from __future__ import annotations

import json
from pathlib import Path


def train_argv(model_dir, data, out, *extra: str, **flags) -> list[str]:
    """`freezetune train` of a tiny model on (train, eval) files into ``out``: batch 4 of 64 tokens, then
    ``flags`` (seq_len=128 is --seq-len 128), then ``extra`` (which wins over both, as on a command line)."""
    argv = ["train", "--model", str(model_dir), "--data", str(data[0]), "--eval-data", str(data[1]), "--out", str(out)]
    for name, value in {"batch_size": 4, "seq_len": 64, **flags}.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv + list(extra)


def metric_records(run_dir: Path) -> list[dict]:
    """Every line of the run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    """The training loss of every step, in order (every line of these runs is a step)."""
    return [record["loss"] for record in metric_records(run_dir)]
