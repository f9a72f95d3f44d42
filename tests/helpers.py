"""What many tests share: a small training run (as argv or as a config), and reading a run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

from freezetune.config.run import TrainConfig
from freezetune.training.loop import TrainingLoop
from freezetune.training.session import open_session


def train_argv(model_dir, data, out, *extra: str, **flags) -> list[str]:
    """`freezetune train` of a tiny model on (train, eval) files into ``out``: batch 4 of 64 tokens, then
    ``flags`` (seq_len=128 is --seq-len 128), then ``extra`` (which wins over both)."""
    argv = ["train", "--model", str(model_dir), "--data", str(data[0]), "--eval-data", str(data[1]), "--out", str(out)]
    for name, value in {"batch_size": 4, "seq_len": 64, **flags}.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return overridden(argv, extra)


def overridden(argv: list[str], extra) -> list[str]:
    """``argv`` with each `--flag value` of ``extra`` in place of its own, the rest of ``extra`` after:
    the CLI refuses an input such as --data typed twice, where a second value would read as "this too"."""
    argv, extra = list(argv), list(extra)
    rest = []
    while extra:
        word = extra.pop(0)
        if word.startswith("--") and word in argv and extra and not extra[0].startswith("--"):
            argv[argv.index(word) + 1] = extra.pop(0)
        else:
            rest.append(word)
    return argv + rest


def metric_records(run_dir: Path) -> list[dict]:
    """Every line of the run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    """The training loss of every step, in order (every line of these runs is a step)."""
    return [record["loss"] for record in metric_records(run_dir)]


def config_for(model_dir, data, out, **overrides) -> TrainConfig:
    """The config of a 6-step run of a tiny model on (train, eval) files into ``out``, then ``overrides``."""
    training, held = data
    values = dict(model=str(model_dir), data=str(training), eval_data=str(held), out=str(out), batch_size=4,
                  max_steps=6, lr=1e-2, warmup=1, seq_len=64, eval_generate=2, show_generations=1,
                  max_new_tokens=8, save_every=2)
    values.update(overrides)
    return TrainConfig(**values)


def train(config: TrainConfig, **run_kwargs) -> dict:
    """Train ``config`` quietly; the loop's result."""
    return TrainingLoop(open_session(config), log=lambda m: None, progress=False).run(**run_kwargs)
