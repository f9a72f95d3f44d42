"""Results from run folders only (no model is loaded): one row per run, then one per strategy.

A strategy's row pools its seeds: eval loss, retain KL and perplexity change as means with
their spread over seeds (the plain fields hold the means), exact match as the mean over seeds
of the rate on the same items (its interval, like every test, comes from the per-item tables
in verdict.py), peak memory as the largest seed's, times as means.
Its learning rate and search come from the strategy folder's search.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from freezetune.comparison.controls import check_seed_of
from freezetune.comparison.flips import base_scores, base_task_fields, task_fields, task_table
from freezetune.comparison.statistics import mean_std, wilson
from freezetune.errors import FreezetuneError
from freezetune.runs.manifest import not_a_run, read_json, read_jsonl, read_metrics

FIELDS = [
    "strategy",
    "kind",
    "status",
    "reason",
    "lr",
    "seeds",
    "trainable_params",
    "total_params",
    "peak_memory_bytes",
    "step_time_s",
    "tokens_per_s",
    "wall_time_s",
    "search_time_s",
    "checkpoint_bytes",
    "eval_loss",
    "eval_loss_std",
    "eval_perplexity",
    "exact_match",
    "exact_match_lo",
    "exact_match_hi",
    "exact_match_items",
    "preference_accuracy",
    "retain_ppl",
    "retain_ppl_delta",
    "retain_ppl_delta_std",
    "retain_kl",
    "retain_kl_std",
    "task_drop",
    "run_dir",
]
# reported as mean and standard deviation over seeds
SPREAD = ("eval_loss", "retain_kl", "retain_ppl_delta")


def read_object(path: Path) -> dict | None:
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise FreezetuneError(f"{path}: damaged, expected a JSON object")
    return value


def read_run(run_dir: Path) -> dict:
    """One run's row: manifest, metrics, eval and forgetting files."""
    manifest = read_object(run_dir / "manifest.json")
    failed = read_object(run_dir / "failed.json")
    if manifest is None and failed is None:
        raise FreezetuneError(not_a_run(run_dir))
    measured = read_object(run_dir / "forgetting.json") or {}
    config = (manifest or {}).get("config", {})
    default_name = "lora" if config.get("lora_r") else "; ".join((manifest or {}).get("plan", []))
    row = {
        "strategy": measured.get("strategy") or (failed or {}).get("strategy") or default_name,
        "kind": measured.get("kind")
        or (failed or {}).get("kind")
        or ("lora" if config.get("lora_r") else "plan"),
        "run_dir": str(run_dir),
        "seed": config.get("seed"),
        "lr": config.get("lr"),
        "status": None,
        "reason": None,
        "layer_drift": measured.get("layer_drift"),
        "loss_curve": [],
        "eval_curve": [],
    }
    if failed is not None:
        return {**row, "status": "failed", "reason": failed["reason"]}
    if manifest.get("status") == "finished" and not (run_dir / "metrics.jsonl").is_file():
        raise FreezetuneError(
            f"{run_dir}: metrics.jsonl is missing; the report needs the run's losses and step times"
        )
    metrics = (
        read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    )
    steps = [m for m in metrics if "loss" in m]
    # the first step pays one-time costs (allocation, the first-step guard)
    timed = steps[1:] or steps
    evaluation = (read_object(run_dir / "eval.json") or {}).get("after") or {}
    weights = run_dir / "trainable.safetensors"
    peak = max((m["peak_memory_bytes"] for m in steps), default=None)
    return {
        **row,
        "status": manifest.get("status"),
        "trainable_params": manifest.get("trainable_params"),
        "total_params": manifest.get("total_params"),
        # on a CPU a comparison's worker records the RSS it had before loading the model: count the peak above it
        "peak_memory_bytes": peak - (measured.get("runtime_rss_bytes") or 0)
        if peak is not None
        else None,
        "peak_rss_bytes": peak,
        "step_time_s": sum(m["step_time_s"] for m in timed) / len(timed) if timed else None,
        "tokens_per_s": sum(m["tokens"] for m in timed) / sum(m["step_time_s"] for m in timed)
        if timed
        else None,
        "wall_time_s": sum(m["step_time_s"] for m in steps) if steps else None,
        "checkpoint_bytes": weights.stat().st_size if weights.is_file() else None,
        "eval_loss": evaluation.get("eval_loss"),
        "eval_perplexity": evaluation.get("eval_perplexity"),
        "exact_match": evaluation.get("exact_match"),
        "exact_match_examples": evaluation.get("exact_match_examples"),
        "preference_accuracy": evaluation.get("eval_accuracy"),  # DPO: reward ranks chosen first
        "retain_ppl": measured.get("retain_ppl"),
        "retain_ppl_delta": measured.get("retain_ppl_delta"),
        "retain_kl": measured.get("retain_kl"),
        "loss_curve": [[m["step"], m["loss"]] for m in steps],
        "eval_curve": [[m["step"], m["eval_loss"]] for m in metrics if "eval_loss" in m],
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def strategy_row(runs: list[dict], search: dict | None) -> dict:
    """One strategy's seeds pooled into a row (see the module doc); failed while any seed failed."""
    first = runs[0]
    row = dict.fromkeys(FIELDS)
    row.update(
        strategy=first["strategy"],
        kind=first["kind"],
        run_dir=first["run_dir"],
        seeds=[r["seed"] for r in runs],
        run_dirs=[r["run_dir"] for r in runs],
        lr=(search or {}).get("chosen", first["lr"]),
        lr_searched=bool((search or {}).get("results")),
        lr_search=(search or {}).get("results", []),
        search_time_s=(search or {}).get("train_s"),
        layer_drift=first["layer_drift"],
        loss_curve=first["loss_curve"],
        eval_curve=first["eval_curve"],
        per_seed=[
            {
                k: r.get(k)
                for k in (
                    "seed",
                    "run_dir",
                    "status",
                    "eval_loss",
                    "exact_match",
                    "retain_kl",
                    "retain_ppl_delta",
                    "peak_memory_bytes",
                )
            }
            for r in runs
        ],
    )
    failed = [r for r in runs if r["status"] == "failed"]
    if failed or any(r["status"] != "finished" for r in runs):
        reason = failed[0]["reason"] if failed else "not finished"
        return {**row, "status": "failed" if failed else runs[0]["status"], "reason": reason}
    row.update(
        status="finished",
        trainable_params=first["trainable_params"],
        total_params=first["total_params"],
        peak_memory_bytes=max(
            (r["peak_memory_bytes"] for r in runs if r["peak_memory_bytes"]), default=None
        ),
        checkpoint_bytes=first["checkpoint_bytes"],
        retain_ppl=_mean(runs, "retain_ppl"),
        eval_perplexity=_mean(runs, "eval_perplexity"),
        **{
            key: _mean(runs, key)
            for key in ("step_time_s", "tokens_per_s", "wall_time_s", "preference_accuracy")
        },
    )
    for key in SPREAD:
        values = [r[key] for r in runs if r[key] is not None]
        mean, std = mean_std(values)
        row.update({key: mean, f"{key}_mean": mean, f"{key}_std": std, f"{key}_values": values})
    scored = [r for r in runs if r["exact_match"] is not None and r["exact_match_examples"]]
    # every seed answers the same items: a rate over those items, averaged over seeds (intervals: verdict.py)
    if scored:
        rate = sum(r["exact_match"] for r in scored) / len(scored)
        row.update(
            exact_match=rate,
            exact_match_mean=rate,
            exact_match_items=scored[0]["exact_match_examples"],
            exact_match_examples=scored[0]["exact_match_examples"],
        )
    return row


def item_tables(row: dict) -> dict[str, np.ndarray]:
    """A finished strategy's seeds x items tables, from the per-item files its runs saved: eval loss (each item's
    loss sum over the mean target count, so the table's mean is the token-weighted loss), exact match (0/1 on
    the items answered) and KL from the base (per retain document, the same way). A table any seed lacks is left out."""
    per_seed = []
    for run_dir in map(Path, row.get("run_dirs") or []):
        items = (
            read_jsonl(run_dir / "eval-items.jsonl")
            if (run_dir / "eval-items.jsonl").is_file()
            else None
        )
        retain = (read_object(run_dir / "forgetting.json") or {}).get("retain_kl_items")
        per_seed.append((items, retain))
    tables = {}
    if per_seed and all(items for items, _ in per_seed):
        tables["eval_loss"] = _table([items for items, _ in per_seed], "loss_sum")
        answered = [[i for i in items if "correct" in i] for items, _ in per_seed]
        if all(answered):
            tables["exact_match"] = np.array(
                [[float(i["correct"]) for i in items] for items in answered]
            )
    if per_seed and all(retain for _, retain in per_seed):
        tables["retain_kl"] = _table([retain for _, retain in per_seed], "kl_sum")
    run_dirs = [Path(d) for d in row.get("run_dirs") or []]
    if (drops := task_table(run_dirs, base_scores(run_dirs))) is not None:
        tables["task_drop"] = drops
    return tables


def _table(seeds: list[list[dict]], key: str) -> np.ndarray:
    if len({tuple(i["id"] for i in items) for items in seeds}) != 1:
        raise FreezetuneError(
            "the seeds of one strategy were scored on different items; run the comparison again"
        )
    mean_tokens = max(sum(i["tokens"] for i in seeds[0]) / len(seeds[0]), 1e-12)
    return np.array([[i[key] for i in items] for items in seeds]) / mean_tokens


def group_runs(run_dirs: list[Path]) -> list[dict]:
    """Strategy rows, in the order their first run appears; runs of the same strategy are its seeds."""
    groups: dict[str, list[dict]] = {}
    for run_dir in run_dirs:
        run = read_run(Path(run_dir))
        check_seed_of(groups.setdefault(run["strategy"], []), run)
        groups[run["strategy"]].append(run)
    rows = []
    for runs in groups.values():
        search = read_object(Path(runs[0]["run_dir"]).parent / "search.json")
        row = strategy_row(runs, search)
        if row["status"] == "finished":
            dirs = [Path(r["run_dir"]) for r in runs]
            row.update(task_fields(dirs, base_scores(dirs)))
        rows.append(row)
    return rows


def base_row(run_dirs: list[Path]) -> dict | None:
    """The base model's reference row, from the first run that recorded its 'before' evaluation."""
    for run_dir in run_dirs:
        before = (read_object(run_dir / "eval.json") or {}).get("before") or (
            read_object(run_dir / "manifest.json") or {}
        ).get("eval_before")
        if before and before.get("eval_loss") is not None:
            measured = read_object(run_dir / "forgetting.json") or {}
            row = dict.fromkeys(FIELDS)
            row.update(
                strategy="base model",
                kind="base",
                status="reference",
                trainable_params=0,
                eval_loss=before.get("eval_loss"),
                eval_perplexity=before.get("eval_perplexity"),
                exact_match=before.get("exact_match"),
                exact_match_examples=before.get("exact_match_examples"),
                exact_match_items=before.get("exact_match_examples"),
                retain_ppl=measured.get("retain_ppl_base"),
                retain_ppl_delta=0.0 if measured else None,
                retain_kl=0.0 if measured else None,
            )
            row.update(base_task_fields(base_scores(list(run_dirs))))
            if before.get("exact_match") is not None and before.get("exact_match_examples"):
                lo, hi = wilson(
                    round(before["exact_match"] * before["exact_match_examples"]),
                    before["exact_match_examples"],
                )
                row.update(exact_match_lo=lo, exact_match_hi=hi, exact_match_ci=[lo, hi])
            return row
    return None
