"""The verdict: which strategies are better than others by more than the noise, and what to pick.

Two axes: task quality, on one metric chosen before anything trained (``choose_metric``: exact
match where the task has short answers to check, eval loss otherwise; the other is reported and
never ranks), and forgetting (KL from the base; peak memory where forgetting was not measured).
Every pair is tested on each axis with the paired mixed model of inference.py, on the same items
and seed indices, and Holm's method corrects each axis for the number of pairs.

A dominates B when A is better on one axis (after correction) and not worse on the other beyond a
margin: the one-sided 95% bound of the difference stays within MARGINS. The frontier is every
strategy nothing dominates; pairs no test separates are reported as such, with the number of
seeds that would likely separate the top two, or the note that the items, not the seeds, limit.
"""

from __future__ import annotations

import itertools

from freezetune.comparison.inference import (
    estimate,
    items_are_the_limit,
    paired,
    seed_noise,
    seeds_needed,
)
from freezetune.comparison.pairs import (
    LEVEL,
    LOWER_IS_BETTER,
    MARGINS,
    better,
    dominance,
    margin,
    memory_order,
    metric_name,
    pair_tests,
)
from freezetune.comparison.results import item_tables
from freezetune.comparison.wording import verdict_sentence
from freezetune.errors import FreezetuneError


def choose_metric(requested: str, objective: str, eval_generate: int) -> tuple[str, str]:
    """The quality metric, from the task alone (before any run): ``requested`` unless it is "auto"."""
    if requested != "auto":
        return requested, "asked for with --metric"
    if objective == "dpo":
        return (
            "eval_loss",
            "preference pairs: the held-out DPO loss against the base model as reference "
            "(preference accuracy is reported beside it)",
        )
    if objective == "sft" and eval_generate > 0:
        return (
            "exact_match",
            "the task has answers to check (SFT with generated answers); eval loss is reported beside it",
        )
    why = (
        "continued pre-training has no answers to check"
        if objective == "cpt"
        else "no answers are generated (--eval-generate 0)"
    )
    return "eval_loss", why


def _annotate(done: list[dict], tables: dict, noises: dict) -> None:
    """Each row's own 95% intervals from the same model, over its items and seeds."""
    for metric, noise in noises.items():
        for row in done:
            table = tables[row["strategy"]][metric]
            interval = estimate(table, noise).interval()
            row[f"{metric}_ci"] = list(interval) if interval else None
            if metric == "exact_match":
                row.update(
                    exact_match_items=table.shape[1],
                    exact_match_lo=interval[0] if interval else None,
                    exact_match_hi=interval[1] if interval else None,
                )
        for row in done:
            row["seeds_count"] = tables[row["strategy"]][metric].shape[0]


def decide(
    rows: list[dict],
    metric: str = "eval_loss",
    metric_reason: str = "",
    margins: dict | None = None,
    forgetting: str = "kl",
    metric_chosen: str = "before training",
) -> dict:
    """The verdict over strategy rows (results.strategy_row) on the quality ``metric`` chosen beforehand:
    every test, the frontier, the best and gentlest, what dominates what, hints, the sentence.
    ``margins``: {metric: ("relative"|"absolute", size)} in place of MARGINS' defaults. ``forgetting``:
    the forgetting axis, "kl" (KL from the base) or "tasks" (accuracy lost on the retain tasks)."""
    done = [r for r in rows if r["status"] == "finished" and r["eval_loss"] is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    unanswered = [r["strategy"] for r in done if r.get("exact_match") is None]
    if metric == "exact_match" and unanswered:
        raise FreezetuneError(
            f"exact match ranks these runs ({metric_reason}), but {', '.join(unanswered)} generated "
            "no answers (--eval-generate 0): give --metric eval_loss, or runs that answered"
        )
    verdict = {
        "metric": metric,
        "metric_reason": metric_reason,
        "metric_chosen": metric_chosen,
        "quality_metric": metric,
        "cost_metric": None,
        "tests": [],
        "frontier": [],
        "indistinguishable": [],
        "best": None,
        "gentlest": None,
        "dominated": [],
        "hints": [],
        "margins": {},
    }
    if not done:
        return {**verdict, "sentence": "No strategy finished, so there is nothing to recommend."}
    tables = {r["strategy"]: item_tables(r) for r in done}
    # each metric's seed noise, pooled over the strategies once: the tests, the intervals and the hints share it
    noises = {
        m: seed_noise([tables[r["strategy"]][m] for r in done])
        for m in ("eval_loss", "exact_match", "retain_kl", "task_drop")
        if all(m in tables[r["strategy"]] for r in done)
    }
    _annotate(done, tables, noises)
    wanted = "task_drop" if forgetting == "tasks" else "retain_kl"
    if forgetting == "tasks" and "task_drop" not in noises:
        unscored = [r["strategy"] for r in done if "task_drop" not in tables[r["strategy"]]]
        raise FreezetuneError(
            f"--forgetting tasks: {', '.join(unscored)} has no retain-task scores for the base's "
            "items (compare --retain-tasks measures them)"
        )
    cost = wanted if wanted in noises else "peak_memory_bytes"
    # in each metric's units
    bounds = {m: margin(m, done, margins or {}) for m in (metric, cost) if m in MARGINS}
    quality_tests = pair_tests(done, tables, metric, noises)
    cost_tests = pair_tests(done, tables, cost, noises) if cost in MARGINS else []
    for test in quality_tests:
        test["axis"] = "quality"
    for test in cost_tests:
        test["axis"] = "forgetting"
    by_pair = {(t["a"], t["b"], t["axis"]): t for t in quality_tests + cost_tests}
    seeds = done[0].get("seeds_count") or len(done[0].get("seeds") or [None])
    dominates, separated = set(), set()
    for a, b in itertools.combinations(done, 2):
        q, c = (
            by_pair.get((a["strategy"], b["strategy"], "quality")),
            by_pair.get((a["strategy"], b["strategy"], "forgetting")),
        )
        winner = dominance(q, c, a, b, metric, cost, bounds)
        if winner:
            dominates.add(
                (a["strategy"], b["strategy"]) if winner == "a" else (b["strategy"], a["strategy"])
            )
        apart = (
            (q is not None and better(q, LOWER_IS_BETTER[metric]) != 0)
            or (c is not None and better(c, True) != 0)
            or (cost == "peak_memory_bytes" and memory_order(a, b)[0] != 0)
        )
        if apart:
            separated.add(frozenset((a["strategy"], b["strategy"])))
    frontier = [
        r for r in done if not any((o["strategy"], r["strategy"]) in dominates for o in done)
    ]
    sign = -1 if LOWER_IS_BETTER[metric] else 1

    def quality(run: dict) -> float:
        value = run.get(metric)
        return sign * value if value is not None else float("-inf")

    best = max(frontier, key=lambda r: (quality(r), -r[cost]))
    gentlest = min(frontier, key=lambda r: (r[cost], -quality(r)))
    tied_best = [
        r
        for r in frontier
        if r is not best
        and not (
            (
                t := by_pair.get((best["strategy"], r["strategy"], "quality"))
                or by_pair.get((r["strategy"], best["strategy"], "quality"))
            )
            and better(t, LOWER_IS_BETTER[metric])
        )
    ]
    dominated = [
        {
            "strategy": r["strategy"],
            "by": next(
                o["strategy"]
                for o in frontier + done
                if (o["strategy"], r["strategy"]) in dominates
            ),
        }
        for r in done
        if r not in frontier
    ]
    groups = [
        [
            r["strategy"]
            for r in done
            if not any(frozenset((r["strategy"], o["strategy"])) in separated for o in done)
        ]
    ]
    hints = _hints(
        sorted(done, key=quality, reverse=True)[:2],
        tables,
        noises,
        metric,
        len(quality_tests) or 1,
        seeds,
    )
    # told apart on forgetting alone, no strategy is the best on quality, whatever its point estimate
    quality_separated = any(better(t, LOWER_IS_BETTER[metric]) != 0 for t in quality_tests)
    named = {"best": best["strategy"], "gentlest": gentlest["strategy"], "dominated": dominated}
    context = {**verdict, **named, "cost_metric": cost, "quality_separated": quality_separated}
    sentence = verdict_sentence(
        done, failed, context, tied_best, bool(separated), len(quality_tests), seeds
    )
    tests = [{k: v for k, v in t.items() if k != "_found"} for t in quality_tests + cost_tests]
    return {
        **verdict,
        "cost_metric": cost,
        "tests": tests,
        "frontier": [r["strategy"] for r in frontier],
        "indistinguishable": [g for g in groups if len(g) > 1],
        "best": best["strategy"],
        "quality_separated": quality_separated,
        "gentlest": gentlest["strategy"],
        "dominated": dominated,
        "hints": hints,
        "margins": bounds,
        "sentence": sentence,
    }


def _hints(
    top: list[dict], tables: dict, noises: dict, metric: str, tests: int, seeds: int
) -> list[str]:
    """How many seeds would likely separate the top two on the ranking metric, or that items are the limit."""
    if len(top) < 2 or not all(metric in tables[r["strategy"]] for r in top) or seeds < 2:
        return []
    a, b = top
    every = [tables[name][metric] for name in tables if metric in tables[name]]
    # some runs without per-item records: the others' noise
    noise = noises.get(metric) or seed_noise(every)
    difference = tables[a["strategy"]][metric] - tables[b["strategy"]][metric]
    gap = float(difference.mean())
    if (
        paired(tables[a["strategy"]][metric], tables[b["strategy"]][metric], noise).p
        < LEVEL / tests
    ):
        return []
    needed = seeds_needed(noise, len(every), difference, gap, tests)
    if needed is not None and needed > seeds:
        return [
            f"about {needed} seeds (now {seeds}) would likely separate {a['strategy']} from {b['strategy']} "
            f"on {metric_name(metric, top)}"
        ]
    if items_are_the_limit(difference, gap, tests):
        return [
            f"more seeds would not separate {a['strategy']} from {b['strategy']} on {metric_name(metric, top)}: the "
            f"{difference.shape[1]} items are the limit; only more distinct eval items would"
        ]
    return []
