"""The verdict: which strategies are better than others by more than the noise, and what to pick.

A run dominates another when it is measurably better on task quality or on forgetting (KL
from the base; peak memory where forgetting was not measured) and measurably worse on
neither (statistics.py says what "measurably" means). The frontier is every run nothing
dominates. Runs no test separates on either axis are reported as indistinguishable, with
about how many seeds or scored answers would likely tell them apart.
"""

from __future__ import annotations

from freezetune.comparison.statistics import (
    items_needed,
    proportions_differ,
    seeds_differ,
    seeds_needed,
)

METRIC_NAMES = {"exact_match": "exact match", "eval_loss": "eval loss", "retain_kl": "KL from the base",
                "peak_memory_bytes": "peak memory"}
MEMORY_MARGIN = 1.05  # peak memory barely varies by seed; closer than 5% is not a difference


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _quality(a: dict, b: dict, metric: str) -> int:
    """+1: a is measurably better than b; -1: measurably worse; 0: the data cannot tell."""
    if metric == "exact_match":
        if proportions_differ(a["exact_match_hits"], a["exact_match_examples"], b["exact_match_hits"], b["exact_match_examples"]):
            return _sign(a["exact_match"] - b["exact_match"])
        return 0
    return _sign(b["eval_loss"] - a["eval_loss"]) if seeds_differ(a["eval_loss_values"], b["eval_loss_values"]) else 0


def _cost(a: dict, b: dict, cost: str) -> int:
    """+1: a costs measurably less than b (lower KL, or under 1/1.05 the peak memory)."""
    if cost == "retain_kl":
        return _sign(b["retain_kl"] - a["retain_kl"]) if seeds_differ(a["retain_kl_values"], b["retain_kl_values"]) else 0
    low, high = sorted([a[cost], b[cost]])
    return _sign(b[cost] - a[cost]) if high > low * MEMORY_MARGIN else 0


def _groups(rows: list[dict], apart) -> list[list[dict]]:
    """Sets of rows in which no test separates any pair on either axis (each row in the first set it fits).
    Chaining would be wrong: a and b alike and b and c alike says nothing about a and c."""
    groups: list[list[dict]] = []
    for row in rows:
        home = next((g for g in groups if not any(apart(row, other) for other in g)), None)
        if home is None:
            groups.append([row])
        else:
            home.append(row)
    return groups


def _hint(a: dict, b: dict, metric: str, seeds: int) -> str | None:
    """About how much more data would likely separate a from b on quality."""
    seeds_hint = seeds_needed(a["eval_loss_values"], b["eval_loss_values"]) if metric == "eval_loss" else None
    if seeds_hint:  # the hint is about the metric that ranks; exact match only where it ranks or loss says nothing
        return f"about {seeds_hint} seeds (now {seeds}) would likely separate {a['strategy']} from {b['strategy']} on eval loss"
    needed = items_needed(a["exact_match"], b["exact_match"]) if a.get("exact_match") is not None else None
    if needed:
        return f"about {needed} scored answers per strategy (now {a['exact_match_examples']}) would likely separate " \
               f"{a['strategy']} from {b['strategy']} on exact match"
    return None


def _shown(row: dict, metric: str) -> str:
    if metric == "exact_match":
        return f"exact match {100 * row['exact_match']:.0f}% [{100 * row['exact_match_lo']:.0f}, {100 * row['exact_match_hi']:.0f}]"
    if metric == "eval_loss":
        spread = f" ± {row['eval_loss_std']:.2g}" if row.get("eval_loss_std") is not None else ""
        return f"eval loss {row['eval_loss']:.4f}{spread}"
    if metric == "retain_kl":
        spread = f" ± {row['retain_kl_std']:.2g}" if row.get("retain_kl_std") is not None else ""
        return f"KL {row['retain_kl']:.3g}{spread}"
    return f"{row[metric] / 2**30:.2f} GiB peak"


def decide(rows: list[dict]) -> dict:
    """The verdict over strategy rows (results.strategy_row): frontier, indistinguishable groups,
    best, gentlest, the metric that ranked them, and the sentence shown to the user."""
    done = [r for r in rows if r["status"] == "finished" and r["eval_loss"] is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    verdict = {"quality_metric": None, "cost_metric": None, "frontier": [], "indistinguishable": [], "best": None,
               "gentlest": None, "dominated": [], "hints": []}
    if not done:
        return {**verdict, "sentence": "No strategy finished, so there is nothing to recommend."}
    checkable = all(r.get("exact_match_hits") is not None for r in done)
    # exact match ranks only where it tells runs apart (0% for every run on open-ended data says nothing)
    em_separates = checkable and any(_quality(a, b, "exact_match") for a in done for b in done if a is not b)
    metric = "exact_match" if em_separates else "eval_loss"
    cost = "retain_kl" if all(r.get("retain_kl_values") for r in done) else "peak_memory_bytes"
    dominates = {(a["strategy"], b["strategy"]) for a in done for b in done if a is not b
                 and min(_quality(a, b, metric), _cost(a, b, cost)) >= 0 and max(_quality(a, b, metric), _cost(a, b, cost)) > 0}
    frontier = [r for r in done if not any((o["strategy"], r["strategy"]) in dominates for o in done)]
    higher = (lambda r: r["exact_match"]) if metric == "exact_match" else (lambda r: -r["eval_loss"])
    best = max(frontier, key=lambda r: (higher(r), -r[cost]))
    gentlest = min(frontier, key=lambda r: (r[cost], -higher(r)))
    apart = lambda a, b: bool(_quality(a, b, metric) or _cost(a, b, cost))  # noqa: E731
    groups = [g for g in _groups(done, apart) if len(g) > 1]
    seeds = len(done[0]["seeds"] or [None])
    hints = [h for g in groups if (h := _hint(*sorted(g, key=higher, reverse=True)[:2], metric, seeds))]
    tied_best = [r for r in frontier if r is not best and not _quality(best, r, metric)]
    # "dominates" is not transitive under noise: a run's dominator may itself be dominated; name a frontier one where there is
    dominated = [{"strategy": r["strategy"], "by": next(o["strategy"] for o in frontier + done if (o["strategy"], r["strategy"]) in dominates)}
                 for r in done if r not in frontier]
    answers = f"{seeds} seed{'s' * (seeds > 1)}" + (f", {done[0]['exact_match_examples']} scored answers each" if checkable else "")
    if len(done) == 1:
        sentence = f"Only {done[0]['strategy']} finished; there is nothing to compare it with."
    elif not any(apart(a, b) for a in done for b in done if a is not b):
        sentence = (f"No measurable difference: {', '.join(r['strategy'] for r in done)} cannot be told apart on "
                    f"{METRIC_NAMES[metric]} or {METRIC_NAMES[cost]} ({answers}).")
    else:
        sentence = f"Best {METRIC_NAMES[metric]}: {best['strategy']} ({_shown(best, metric)})"
        if tied_best:
            sentence += f", within noise of {', '.join(r['strategy'] for r in tied_best)}"
        if gentlest is not best:
            sentence += f"; least forgetting: {gentlest['strategy']} ({_shown(gentlest, cost)})"
        if dominated:
            sentence += "; dominated: " + ", ".join(f"{d['strategy']} (by {d['by']})" for d in dominated)
        sentence += f". Ranked by {METRIC_NAMES[metric]}" + (", which separates these runs" if metric == "exact_match" else
                                                             "" if not checkable else "; exact match separates none of them") + f" ({answers})."
    if failed:
        sentence += " Failed: " + "; ".join(f"{r['strategy']} ({r['reason']})" for r in failed) + "."
    return {**verdict, "quality_metric": metric, "cost_metric": cost, "frontier": [r["strategy"] for r in frontier],
            "indistinguishable": [[r["strategy"] for r in g] for g in groups], "best": best["strategy"],
            "gentlest": gentlest["strategy"], "dominated": dominated, "hints": hints, "sentence": sentence}


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
    lines.append(f"On the frontier of {METRIC_NAMES[metric]} against {METRIC_NAMES[cost]}: "
                 + "; ".join(f"{r['strategy']} ({_shown(r, metric)}, {_shown(r, cost)}, lr {r['lr']:.3g})" for r in on) + ".")
    best = by_name[verdict["best"]]
    lines.append(f"Best quality: {best['strategy']}, at {_ratio(best['step_time_s'], min(r['step_time_s'] for r in on))} "
                 f"the fastest frontier step time and {best['peak_memory_bytes'] / 2**30:.2f} GiB peak memory.")
    for entry in verdict["dominated"]:
        row, winner = by_name[entry["strategy"]], by_name[entry["by"]]
        lines.append(f"{row['strategy']} is dominated by {winner['strategy']}: {_shown(row, metric)} vs {_shown(winner, metric)}, "
                     f"{_ratio(row[cost], winner[cost])} the {METRIC_NAMES[cost]}, "
                     f"{_ratio(row['peak_memory_bytes'], winner['peak_memory_bytes'])} the peak memory, "
                     f"{_ratio(row['step_time_s'], winner['step_time_s'])} the step time.")
    for group in verdict["indistinguishable"]:
        lines.append(f"Not separable on either axis: {', '.join(group)}.")
    lines += [f"To separate them: {hint}." for hint in verdict["hints"]]
    return lines
