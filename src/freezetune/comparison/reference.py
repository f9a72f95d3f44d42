"""The base model's reference, computed once per comparison and kept on disk: its evaluation (every
run's "before") and its next-token distributions on the retain set (what each run's KL is measured
against), so that no run needs the base model resident beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from freezetune.comparison.benchmarks import score_tasks, scoring_batch
from freezetune.comparison.flips import tasks_current
from freezetune.comparison.forgetting import base_distributions, build_retain
from freezetune.comparison.settings import CompareSettings
from freezetune.data.examples import pad_token_id
from freezetune.errors import FreezetuneError
from freezetune.models.loading import file_sha256
from freezetune.runs.checkpoint import read_metadata, read_tensors, save_trainable
from freezetune.runs.durable import set_aside, write_json, write_text
from freezetune.runs.manifest import read_json
from freezetune.training.evaluation import evaluate_model
from freezetune.training.preference import evaluate_base
from freezetune.training.session import run_data


def _retain_damage(retain: Path, reference: Path) -> str | None:
    """Why the retain set cannot be trusted: a file that fails its checksum, or examples that are not the
    ones the base's distributions were computed on."""
    try:
        recorded = read_metadata(reference).get("retain_sha256")
        read_tensors(reference)
    except FreezetuneError as exc:
        return str(exc).split(": ", 1)[-1] if ": " in str(exc) else str(exc)
    if not retain.is_file():
        return f"{retain.name} is missing"
    if recorded is not None and file_sha256(retain) != recorded:
        return f"{retain.name} is not the file its distributions were computed on"
    return None


def base_reference(settings: CompareSettings, loaded, log, progress: bool) -> dict:
    """The base model's evaluation (every run's "before") and its retain distributions, computed once
    per output folder and kept on disk: the runs never need the base model resident."""
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer = loaded.model.to(device).eval(), loaded.tokenizer
    path = settings.out / "base.json"
    computed = not path.is_file()
    if not path.is_file():
        config = settings.base_config
        _, held, _ = run_data(tokenizer, config)
        log("evaluating the base model once, as the reference row")
        if config.objective == "dpo":
            measured = evaluate_base(base, tokenizer, held.examples, config, device, progress)
        else:
            measured = evaluate_model(
                base, tokenizer, held.examples, config, device, label="base", progress=progress
            )
        write_text(
            settings.out / "base-items.jsonl",
            "".join(json.dumps(i) + "\n" for i in measured.pop("items")),
        )
        write_json(path, {**measured, "label": "before"})
    retain, reference = settings.out / "retain.json", settings.out / "retain-base.safetensors"
    if reference.is_file() and (why := _retain_damage(retain, reference)):
        for damaged in (p for p in (retain, reference) if p.is_file()):
            log(
                f"warning: {damaged} set aside as {set_aside(damaged).name} ({why}); the retain set is built again"
            )
    computed = computed or not reference.is_file()
    if not reference.is_file():
        examples = build_retain(
            base,
            tokenizer,
            settings.base_config.seq_len,
            device,
            settings.retain,
            progress=progress,
        )
        write_json(retain, [vars(e) for e in examples])
        save_trainable(
            base_distributions(
                base,
                examples,
                settings.base_config.batch_size,
                pad_token_id(tokenizer),
                device,
                progress=progress,
            ),
            reference,
            {"retain_sha256": file_sha256(retain)},
        )
    timing = settings.out / "base-timing.json"
    if computed:  # a comparison resumed later keeps what the base cost when it was computed
        write_json(timing, {"base": time.perf_counter() - started})
    asked = settings.task_request()
    if asked and not tasks_current(Path(asked["base"]), asked):
        log(f"scoring the base model on the retain tasks once: {', '.join(asked['names'])}")
        scored = score_tasks(
            base,
            tokenizer,
            asked["names"],
            Path(asked["folder"]),
            asked["limit"],
            scoring_batch(settings.base_config.batch_size),
            progress,
        )
        write_json(Path(asked["base"]), scored)
        accuracies = ", ".join(
            f"{name} {100 * task['accuracy']:.1f}% of {len(task['items'])} items"
            for name, task in scored["tasks"].items()
        )
        log(f"base model on the retain tasks: {accuracies} ({scored['seconds']:.0f} s)")
        write_json(timing, {**(read_json(timing) or {}), "tasks": scored["seconds"]})
    return {k: v for k, v in read_json(path).items() if k != "answers"}
