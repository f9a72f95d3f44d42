"""The controls a report's verdict rests on, read from the runs' manifests: every run scored on the
same items (refused otherwise: the tests pair them item by item), and every strategy trained on
the same data and budget (said otherwise: a longer run is not a better strategy). A `compare`
holds both by construction; `report` over `train` runs may not."""

from __future__ import annotations

from pathlib import Path

from freezetune.errors import FreezetuneError
from freezetune.runs.manifest import read_json


def _finished(run_dirs: list[Path]) -> list[tuple[Path, dict]]:
    """The finished runs with their manifests (a run that did not finish has no scores to pair)."""
    found = [(Path(d), read_json(Path(d) / "manifest.json", missing={}) or {}) for d in run_dirs]
    return [(d, m) for d, m in found if m.get("status") == "finished"]


def _scored_on(manifest: dict) -> dict[str, tuple]:
    """What decides a run's held-out items, each as (value, how to show it)."""
    config, hashes = manifest.get("config") or {}, manifest.get("data_sha256") or {}
    model = manifest.get("base_model") or {}
    if config.get("validation"):
        items = ("validation", config["validation"], hashes.get("data"))
        shown = f"{config['validation']} validation examples of --data {config.get('data')}"
    elif config.get("eval_data"):
        items, shown = ("eval data", hashes.get("eval_data")), f"--eval-data {config['eval_data']}"
    else:
        items = ("held out of data", hashes.get("data"))
        shown = (
            f"held out of --data {config['data']}" if config.get("data") else "the built-in task"
        )
    return {
        "base model": (model.get("sha256"), model.get("name")),
        "objective": (config.get("objective"), config.get("objective")),
        "seq len": (config.get("seq_len"), config.get("seq_len")),
        "held-out items": (items, shown),
    }


def check_same_items(run_dirs: list[Path]) -> None:
    """The verdict pairs runs item by item, so every run must have been scored on the same items:
    runs of one comparison. Others are refused, naming what differs (a run that did not finish
    has no scores to pair)."""
    first = None
    for run_dir, manifest in _finished(run_dirs):
        facts = _scored_on(manifest)
        if first is None:
            first = (run_dir, facts)
            continue
        for what, (value, shown) in facts.items():
            if value != first[1][what][0]:
                raise FreezetuneError(
                    f"{first[0]} and {run_dir} were not scored on the same items ({what}: "
                    f"{first[1][what][1]} vs {shown}); the report pairs runs item by item, so it "
                    "takes the runs of one comparison"
                )


def check_seed_of(seeds: list[dict], run: dict) -> None:
    """``run`` may join ``seeds``, its strategy's runs so far: a seed counts once (the same folder given
    twice, or a copy, was counted twice), and seeds share one rate (a row shows one)."""
    for other in seeds:
        name, rates = run["strategy"], (other["lr"], run["lr"])
        if None not in rates and rates[0] != rates[1]:
            raise FreezetuneError(
                f"{other['run_dir']} and {run['run_dir']} are both '{name}', at lr {rates[0]:g} and "
                f"{rates[1]:g}: runs of one strategy are its seeds, at one rate; report each rate's "
                "runs apart"
            )
        if other["seed"] == run["seed"]:
            raise FreezetuneError(
                f"{other['run_dir']} and {run['run_dir']} are both '{name}' with seed {run['seed']}: "
                "runs of one strategy are its seeds, and each counts once; give one of them"
            )


def _trained_on(manifest: dict) -> dict[str, tuple]:
    """What a run trained on and how much of it, each as (value, how to show it)."""
    config, hashes = manifest.get("config") or {}, manifest.get("data_sha256") or {}
    data = config.get("data") or "the built-in task"
    per_step = (config.get("batch_size") or 0) * (config.get("grad_accum") or 1)
    return {
        "training data": (
            (data, hashes.get("data")),
            f"{data} (sha256 {str(hashes.get('data'))[:12]})",
        ),
        "steps": (manifest.get("steps"), manifest.get("steps")),
        "examples per step": (per_step, per_step),
    }


def unequal_budgets(run_dirs: list[Path]) -> list[str]:
    """A line for each way the runs' training differs, naming a run that differs from the first."""
    runs = [(run_dir, _trained_on(manifest)) for run_dir, manifest in _finished(run_dirs)]
    lines = []
    for what, (value, shown) in (runs[0][1] if runs else {}).items():
        other = next(
            ((d, facts[what][1]) for d, facts in runs[1:] if facts[what][0] != value), None
        )
        if other is not None:
            lines.append(
                f"Not the same {what}: {shown} in {runs[0][0]}, {other[1]} in {other[0]}; the verdict "
                "compares the runs as they trained, not the strategies on one budget."
            )
    return lines
