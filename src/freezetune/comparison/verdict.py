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

import numpy as np

from freezetune.comparison.inference import (
    METHOD,
    Estimate,
    estimate,
    holm,
    items_are_the_limit,
    paired,
    seed_noise,
    seeds_needed,
)
from freezetune.comparison.results import item_tables

METRIC_NAMES = {
    "exact_match": "exact match",
    "eval_loss": "eval loss",
    "retain_kl": "KL from the base",
    "peak_memory_bytes": "peak memory",
}
LOWER_IS_BETTER = {
    "exact_match": False,
    "eval_loss": True,
    "retain_kl": True,
    "peak_memory_bytes": True,
}
# "not worse": eval loss within 1% of the strategies' mean, exact match within 2 points, KL within
# 10% of the mean KL
MARGINS = {
    "eval_loss": ("relative", 0.01),
    "exact_match": ("absolute", 0.02),
    "retain_kl": ("relative", 0.10),
}
MEMORY_MARGIN = 1.05  # peak memory barely varies by seed; closer than 5% is not a difference
LEVEL = 0.05


def choose_metric(requested: str, objective: str, eval_generate: int) -> tuple[str, str]:
    """The quality metric, from the task alone (before any run): ``requested`` unless it is "auto"."""
    if requested != "auto":
        return requested, "asked for with --metric"
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


def _margin(metric: str, done: list[dict], given: dict) -> float:
    kind, size = given.get(metric) or MARGINS[metric]
    if kind == "absolute":
        return size
    return size * float(np.mean([r[metric] for r in done if r.get(metric) is not None] or [0.0]))


def _tests(done: list[dict], tables: dict, metric: str, noises: dict) -> list[dict]:
    """Every pair on one metric, paired by item and seed, Holm-corrected across the pairs."""
    if metric not in noises:
        return []
    noise = noises[metric]
    tests = []
    for a, b in itertools.combinations(done, 2):
        found = paired(tables[a["strategy"]][metric], tables[b["strategy"]][metric], noise)
        tests.append(
            {
                "a": a["strategy"],
                "b": b["strategy"],
                "metric": metric,
                "estimate": found.value,
                "ci": list(found.interval()) if found.se is not None else None,
                "p": found.p,
                "method": METHOD,
                "_found": found,
            }
        )
    for test, adjusted in zip(tests, holm([t["p"] for t in tests])):
        test["p_adjusted"] = adjusted
    return tests


def _better(test: dict, lower: bool) -> int:
    """+1: a is better than b after correction; -1: worse; 0: not separated."""
    if test["p_adjusted"] is None or test["p_adjusted"] >= LEVEL:
        return 0
    return (1 if test["estimate"] < 0 else -1) if lower else (1 if test["estimate"] > 0 else -1)


def _not_worse(found: Estimate, lower: bool, margin: float, for_a: bool) -> bool:
    """Whether a (or b) is not worse than the other beyond ``margin``: the one-sided 95% bound of the
    difference a - b, on the side that would make it worse, stays within the margin."""
    worse = (1 if lower else -1) * (1 if for_a else -1)  # the sign of a - b that means "worse"
    bound = found.bound(worse)
    return bound is not None and worse * bound <= margin


def _memory(a: dict, b: dict) -> tuple[int, bool]:
    """(+1/-1/0 better, a not worse) on peak memory, which barely varies by seed."""
    low, high = sorted([a["peak_memory_bytes"], b["peak_memory_bytes"]])
    better = (
        (1 if a["peak_memory_bytes"] < b["peak_memory_bytes"] else -1)
        if high > low * MEMORY_MARGIN
        else 0
    )
    return better, a["peak_memory_bytes"] <= b["peak_memory_bytes"] * MEMORY_MARGIN


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


def _shown(row: dict, metric: str) -> str:
    ci = row.get(f"{metric}_ci")
    if metric == "exact_match":
        interval = f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else ""
        return f"exact match {100 * row['exact_match']:.1f}%{interval}"
    if metric in ("eval_loss", "retain_kl"):
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
        return f"{'eval loss' if metric == 'eval_loss' else 'KL'} {row[metric]:.4g}{interval}"
    return f"{row[metric] / 2**30:.2f} GiB peak"


def _pair_outcome(
    test_q: dict | None,
    test_c: dict | None,
    a: dict,
    b: dict,
    metric: str,
    cost: str,
    margins: dict,
) -> str | None:
    """ "a" or "b" when one dominates the other, else None."""
    for winner, for_a in (("a", True), ("b", False)):
        sign = 1 if for_a else -1
        q_better = test_q is not None and _better(test_q, LOWER_IS_BETTER[metric]) == sign
        q_fine = test_q is not None and _not_worse(
            test_q["_found"], LOWER_IS_BETTER[metric], margins[metric], for_a
        )
        if cost == "peak_memory_bytes":
            memory_better, a_fine = _memory(a, b) if for_a else _memory(b, a)
            c_better, c_fine = memory_better == 1, a_fine
        else:
            c_better = test_c is not None and _better(test_c, True) == sign
            c_fine = test_c is not None and _not_worse(test_c["_found"], True, margins[cost], for_a)
        if (q_better and c_fine) or (c_better and q_fine):
            return winner
    return None


def decide(
    rows: list[dict],
    metric: str = "eval_loss",
    metric_reason: str = "",
    margins: dict | None = None,
) -> dict:
    """The verdict over strategy rows (results.strategy_row) on the quality ``metric`` chosen beforehand:
    every test, the frontier, the best and gentlest, what dominates what, hints, the sentence.
    ``margins``: {metric: ("relative"|"absolute", size)} in place of MARGINS' defaults."""
    done = [r for r in rows if r["status"] == "finished" and r["eval_loss"] is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    verdict = {
        "metric": metric,
        "metric_reason": metric_reason,
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
        for m in ("eval_loss", "exact_match", "retain_kl")
        if all(m in tables[r["strategy"]] for r in done)
    }
    _annotate(done, tables, noises)
    cost = (
        "retain_kl"
        if all("retain_kl" in tables[r["strategy"]] for r in done)
        else "peak_memory_bytes"
    )
    # in each metric's units
    bounds = {m: _margin(m, done, margins or {}) for m in (metric, cost) if m in MARGINS}
    quality_tests = _tests(done, tables, metric, noises)
    cost_tests = _tests(done, tables, cost, noises) if cost in MARGINS else []
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
        winner = _pair_outcome(q, c, a, b, metric, cost, bounds)
        if winner:
            dominates.add(
                (a["strategy"], b["strategy"]) if winner == "a" else (b["strategy"], a["strategy"])
            )
        apart = (
            (q is not None and _better(q, LOWER_IS_BETTER[metric]) != 0)
            or (c is not None and _better(c, True) != 0)
            or (cost == "peak_memory_bytes" and _memory(a, b)[0] != 0)
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
            and _better(t, LOWER_IS_BETTER[metric])
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
    items = done[0].get("exact_match_items")
    units = f"{seeds} seed{'s' * (seeds > 1)}" + (f", {items} items" if items else "")
    corrected = (
        f"Holm-corrected over {len(quality_tests)} pairs" if len(quality_tests) > 1 else "one pair"
    )
    if len(done) == 1:
        sentence = f"Only {done[0]['strategy']} finished; there is nothing to compare it with."
    elif not quality_tests and len(done) > 1:
        sentence = (
            f"No test on {METRIC_NAMES[metric]} was possible: some runs have no per-item records "
            "(eval-items.jsonl, written since freezetune scores items one by one); run the comparison again."
        )
    elif not separated:
        sentence = (
            f"No measurable difference: {', '.join(r['strategy'] for r in done)} cannot be told apart on "
            f"{METRIC_NAMES[metric]} or {METRIC_NAMES[cost]} ({units}; {corrected})."
        )
    else:
        sentence = f"Best {METRIC_NAMES[metric]}: {best['strategy']} ({_shown(best, metric)})"
        if tied_best:
            sentence += f", not separable from {', '.join(r['strategy'] for r in tied_best)}"
        if gentlest is not best:
            sentence += f"; least forgetting: {gentlest['strategy']} ({_shown(gentlest, cost)})"
        if dominated:
            sentence += "; dominated: " + ", ".join(
                f"{d['strategy']} (by {d['by']})" for d in dominated
            )
        chosen = f"{METRIC_NAMES[metric]}, chosen before training: {metric_reason}"
        sentence += f". Ranked by {chosen} ({units}; {corrected})."
    if failed:
        sentence += (
            " Failed: " + "; ".join(f"{r['strategy']} ({r['reason']})" for r in failed) + "."
        )
    tests = [{k: v for k, v in t.items() if k != "_found"} for t in quality_tests + cost_tests]
    return {
        **verdict,
        "cost_metric": cost,
        "tests": tests,
        "frontier": [r["strategy"] for r in frontier],
        "indistinguishable": [g for g in groups if len(g) > 1],
        "best": best["strategy"],
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
            f"on {METRIC_NAMES[metric]}"
        ]
    if items_are_the_limit(difference, gap, tests):
        return [
            f"more seeds would not separate {a['strategy']} from {b['strategy']} on {METRIC_NAMES[metric]}: the "
            f"{difference.shape[1]} items are the limit; only more distinct eval items would"
        ]
    return []


def _ratio(a, b) -> str:
    """Two significant digits: 0.034×, 1.5×, 12× (one decimal printed 0.034 as 0.0×)."""
    return f"{a / b:.2g}×" if a is not None and b else "n/a"


def recommend(rows: list[dict], verdict: dict) -> list[str]:
    """The verdict's sentence, then the frontier with its numbers, what each dominated run costs, the hints."""
    lines = [verdict["sentence"]]
    if not verdict["frontier"]:
        return lines
    metric, cost = verdict["quality_metric"], verdict["cost_metric"]
    by_name = {r["strategy"]: r for r in rows}
    on = [by_name[name] for name in verdict["frontier"]]
    lines.append(
        f"On the frontier of {METRIC_NAMES[metric]} against {METRIC_NAMES[cost]}: "
        + "; ".join(
            f"{r['strategy']} ({_shown(r, metric)}, {_shown(r, cost)}, lr {r['lr']:.3g})"
            for r in on
        )
        + "."
    )
    best = by_name[verdict["best"]]
    lines.append(
        f"Best quality: {best['strategy']}, at {_ratio(best['step_time_s'], min(r['step_time_s'] for r in on))} "
        f"the fastest frontier step time and {best['peak_memory_bytes'] / 2**30:.2f} GiB peak memory."
    )
    for entry in verdict["dominated"]:
        row, winner = by_name[entry["strategy"]], by_name[entry["by"]]
        lines.append(
            f"{row['strategy']} is dominated by {winner['strategy']}: "
            f"{_shown(row, metric)} vs {_shown(winner, metric)}, "
            f"{_ratio(row[cost], winner[cost])} the {METRIC_NAMES[cost]}, "
            f"{_ratio(row['peak_memory_bytes'], winner['peak_memory_bytes'])} the peak memory, "
            f"{_ratio(row['step_time_s'], winner['step_time_s'])} the step time."
        )
    for group in verdict["indistinguishable"]:
        lines.append(f"Not separable on either axis: {', '.join(group)}.")
    lines += [f"To separate them: {hint}." for hint in verdict["hints"]]
    return lines
