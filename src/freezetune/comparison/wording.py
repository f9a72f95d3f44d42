"""The verdict in words: the sentence that ends a comparison and the lines of its recommendation,
each number with its interval."""

from __future__ import annotations

from freezetune.comparison.pairs import metric_name


def shown(row: dict, metric: str) -> str:
    ci = row.get(f"{metric}_ci")
    if metric == "exact_match":
        interval = f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else ""
        return f"exact match {100 * row['exact_match']:.1f}%{interval}"
    if metric in ("eval_loss", "retain_kl"):
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
        return f"{metric_name(metric, [row]) if metric == 'eval_loss' else 'KL'} {row[metric]:.4g}{interval}"
    if metric == "task_drop":  # shown as the change in accuracy: a drop of 2 points reads -2.0
        interval = f" [{-100 * ci[1]:+.1f}, {-100 * ci[0]:+.1f}]" if ci else ""
        return f"retain-task accuracy {-100 * row[metric] + 0.0:+.1f} pts{interval}"
    return f"{row[metric] / 2**30:.2f} GiB peak"


def verdict_sentence(
    done: list[dict],
    failed: list[dict],
    verdict: dict,
    tied_best: list[dict],
    separated: bool,
    pairs: int,
    seeds: int,
) -> str:
    """The verdict in one paragraph: best, least forgetting, what is dominated, the units and the
    correction; or that nothing could be told apart, and why."""
    metric, cost, metric_reason = (
        verdict["metric"],
        verdict["cost_metric"],
        verdict["metric_reason"],
    )
    by_name = {r["strategy"]: r for r in done}
    best, gentlest, dominated = (
        by_name[verdict["best"]],
        by_name[verdict["gentlest"]],
        verdict["dominated"],
    )
    items = done[0].get("exact_match_items")
    units = f"{seeds} seed{'s' * (seeds > 1)}" + (f", {items} items" if items else "")
    corrected = f"Holm-corrected over {pairs} pairs" if pairs > 1 else "one pair"
    if len(done) == 1:
        sentence = f"Only {done[0]['strategy']} finished; there is nothing to compare it with."
    elif not pairs and len(done) > 1:
        sentence = (
            f"No test on {metric_name(metric, done)} was possible: some runs have no per-item records "
            "(eval-items.jsonl, written since freezetune scores items one by one); run the comparison again."
        )
    elif not separated:
        sentence = (
            f"No measurable difference: {', '.join(r['strategy'] for r in done)} cannot be told apart on "
            f"{metric_name(metric, done)} or {metric_name(cost, done)} ({units}; {corrected})."
        )
    else:
        least = "least memory" if cost == "peak_memory_bytes" else "least forgetting"
        if verdict["quality_separated"]:
            sentence = (
                f"Best {metric_name(metric, done)}: {best['strategy']} ({shown(best, metric)})"
            )
            if tied_best:
                sentence += f", not separable from {', '.join(r['strategy'] for r in tied_best)}"
            if gentlest is not best:
                sentence += f"; {least}: {gentlest['strategy']} ({shown(gentlest, cost)})"
        else:
            sentence = (
                f"No measurable difference in {metric_name(metric, done)}: {', '.join(r['strategy'] for r in done)} "
                f"cannot be told apart on it; {least}: {gentlest['strategy']} ({shown(gentlest, cost)})"
            )
        if dominated:
            sentence += "; dominated: " + ", ".join(
                f"{d['strategy']} (by {d['by']})" for d in dominated
            )
        chosen = f"{metric_name(metric, done)}, chosen {verdict['metric_chosen']}: {metric_reason}"
        sentence += f". Ranked by {chosen} ({units}; {corrected})."
    if failed:
        sentence += (
            " Failed: " + "; ".join(f"{r['strategy']} ({r['reason']})" for r in failed) + "."
        )
    return sentence


def ratio(a, b) -> str:
    """Two significant digits: 0.034×, 1.5×, 12× (one decimal printed 0.034 as 0.0×)."""
    return f"{a / b:.2g}×" if a is not None and b else "n/a"


def difference(row: dict, other: dict, metric: str) -> str:
    """How ``row`` stands to ``other`` on ``metric``: a ratio, or for an accuracy drop (which may be
    zero or negative) the difference in points."""
    if metric == "task_drop":
        return f"{100 * (row[metric] - other[metric]):+.1f} pts on"
    return ratio(row[metric], other[metric])


def recommend(rows: list[dict], verdict: dict) -> list[str]:
    """The verdict's sentence, then the frontier with its numbers, what each dominated run costs, the hints."""
    lines = [verdict["sentence"]]
    if not verdict["frontier"]:
        return lines
    metric, cost = verdict["quality_metric"], verdict["cost_metric"]
    by_name = {r["strategy"]: r for r in rows}
    on = [by_name[name] for name in verdict["frontier"]]
    lines.append(
        f"On the frontier of {metric_name(metric, rows)} against {metric_name(cost, rows)}: "
        + "; ".join(
            f"{r['strategy']} ({shown(r, metric)}, {shown(r, cost)}, lr {r['lr']:.3g})" for r in on
        )
        + "."
    )
    best = by_name[verdict["best"]]
    # with one run finished there is no best to name: the sentence said so
    compared = len(on) > 1 or verdict["dominated"]
    if compared and verdict.get("quality_separated", True):
        lines.append(
            f"Best quality: {best['strategy']}, at {ratio(best['step_time_s'], min(r['step_time_s'] for r in on))} "
            f"the fastest frontier step time and {best['peak_memory_bytes'] / 2**30:.2f} GiB peak memory."
        )
    elif compared:
        lines.append(
            f"Best quality: none measurably; {metric_name(metric, rows)} cannot tell the strategies apart."
        )
    for entry in verdict["dominated"]:
        row, winner = by_name[entry["strategy"]], by_name[entry["by"]]
        lines.append(
            f"{row['strategy']} is dominated by {winner['strategy']}: "
            f"{shown(row, metric)} vs {shown(winner, metric)}, "
            f"{difference(row, winner, cost)} the {metric_name(cost, rows)}, "
            f"{ratio(row['peak_memory_bytes'], winner['peak_memory_bytes'])} the peak memory, "
            f"{ratio(row['step_time_s'], winner['step_time_s'])} the step time."
        )
    for group in verdict["indistinguishable"]:
        lines.append(f"Not separable on either axis: {', '.join(group)}.")
    lines += [f"To separate them: {hint}." for hint in verdict["hints"]]
    return lines
