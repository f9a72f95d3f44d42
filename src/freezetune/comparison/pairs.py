"""Two strategies side by side: every pair tested on one metric (paired by item and seed,
Holm-corrected across the pairs), and whether one dominates the other: better on one axis after
correction and not worse on the other beyond a margin (the one-sided 95% bound of the difference
stays within MARGINS). verdict.py applies it to every pair of a comparison."""

from __future__ import annotations

import itertools

import numpy as np

from freezetune.comparison.inference import METHOD, Estimate, holm, paired

METRIC_NAMES = {
    "exact_match": "exact match",
    "eval_loss": "eval loss",
    "retain_kl": "KL from the base",
    "task_drop": "accuracy lost on the retain tasks",
    "peak_memory_bytes": "peak memory",
}
LOWER_IS_BETTER = {
    "exact_match": False,
    "eval_loss": True,
    "retain_kl": True,
    "task_drop": True,
    "peak_memory_bytes": True,
}


def metric_name(metric: str, rows: list[dict]) -> str:
    """A metric's name in words; a preference comparison's eval loss is its DPO loss, as its table says."""
    if metric == "eval_loss" and any(r.get("preference_accuracy") is not None for r in rows):
        return "eval DPO loss"
    return METRIC_NAMES[metric]


# "not worse": eval loss within 1% of the strategies' mean, exact match within 2 points, KL within
# 10% of the mean KL, retain-task accuracy within 2 points
MARGINS = {
    "eval_loss": ("relative", 0.01),
    "exact_match": ("absolute", 0.02),
    "retain_kl": ("relative", 0.10),
    "task_drop": ("absolute", 0.02),
}
MEMORY_MARGIN = 1.05  # peak memory barely varies by seed; closer than 5% is not a difference
LEVEL = 0.05


def margin(metric: str, done: list[dict], given: dict) -> float:
    kind, size = given.get(metric) or MARGINS[metric]
    if kind == "absolute":
        return size
    return size * float(np.mean([r[metric] for r in done if r.get(metric) is not None] or [0.0]))


def pair_tests(done: list[dict], tables: dict, metric: str, noises: dict) -> list[dict]:
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


def better(test: dict, lower: bool) -> int:
    """+1: a is better than b after correction; -1: worse; 0: not separated."""
    if test["p_adjusted"] is None or test["p_adjusted"] >= LEVEL:
        return 0
    return (1 if test["estimate"] < 0 else -1) if lower else (1 if test["estimate"] > 0 else -1)


def not_worse(found: Estimate, lower: bool, margin: float, for_a: bool) -> bool:
    """Whether a (or b) is not worse than the other beyond ``margin``: the one-sided 95% bound of the
    difference a - b, on the side that would make it worse, stays within the margin."""
    worse = (1 if lower else -1) * (1 if for_a else -1)  # the sign of a - b that means "worse"
    bound = found.bound(worse)
    return bound is not None and worse * bound <= margin


def memory_order(a: dict, b: dict) -> tuple[int, bool]:
    """(+1/-1/0 better, a not worse) on peak memory, which barely varies by seed."""
    low, high = sorted([a["peak_memory_bytes"], b["peak_memory_bytes"]])
    better = (
        (1 if a["peak_memory_bytes"] < b["peak_memory_bytes"] else -1)
        if high > low * MEMORY_MARGIN
        else 0
    )
    return better, a["peak_memory_bytes"] <= b["peak_memory_bytes"] * MEMORY_MARGIN


def dominance(
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
        q_better = test_q is not None and better(test_q, LOWER_IS_BETTER[metric]) == sign
        q_fine = test_q is not None and not_worse(
            test_q["_found"], LOWER_IS_BETTER[metric], margins[metric], for_a
        )
        if cost == "peak_memory_bytes":
            memory_better, a_fine = memory_order(a, b) if for_a else memory_order(b, a)
            c_better, c_fine = memory_better == 1, a_fine
        else:
            c_better = test_c is not None and better(test_c, True) == sign
            c_fine = test_c is not None and not_worse(test_c["_found"], True, margins[cost], for_a)
        if (q_better and c_fine) or (c_better and q_fine):
            return winner
    return None
