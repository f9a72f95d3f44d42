"""What the two peer drivers share: the job bench/peers.py wrote, and a timer of each optimizer step.

Imported by run_trl.py (the project's venv) and run_llamafactory.py (LLaMA-Factory's own venv), so it
uses only what both venvs have: transformers and the standard library. bench/integration.py times
its Trainer steps with the same StepTimer.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


def read_job(path: str) -> dict:
    """The job: model folder, rows (input_ids and labels, -100 where no loss) and the settings."""
    return json.loads(Path(path).read_text())


def rows_match(job: dict, rows) -> bool:
    """Whether ``rows`` (what the peer will train on) are the job's token ids and labels, row by row."""
    if len(rows) != len(job["rows"]):
        return False
    return all(
        list(got["input_ids"]) == want["input_ids"] and list(got["labels"]) == want["labels"]
        for got, want in zip(rows, job["rows"])
    )


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step as the Trainer's own loop brackets it (the batch is fetched before)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def shared_arguments(job: dict) -> dict:
    """The TrainingArguments both peers get, the settings all three tools share: batch, epochs, rate,
    warmup and cosine schedule, torch's AdamW, seed; no saving mid-run, no trackers, no bars."""
    steps = job["epochs"] * (len(job["rows"]) // job["batch_size"])
    return {
        "per_device_train_batch_size": job["batch_size"],
        "num_train_epochs": float(job["epochs"]),
        "learning_rate": job["lr"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": math.ceil(job["warmup_ratio"] * steps),
        "optim": "adamw_torch",
        "seed": job["seed"],
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def report(path: str, **fields) -> None:
    """The driver's answer to the bench, one JSON file (the bench reads nothing from stdout)."""
    Path(path).write_text(json.dumps(fields) + "\n")


def usage(doc: str) -> None:
    print(doc, file=sys.stderr)
    sys.exit(2)
