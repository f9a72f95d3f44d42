"""The comparison report: numbers with their spreads, plots with error bars, the verdict.

Writes report.html (one file, plots embedded), report.md (+ plots/*.png), results.json and
results.csv, from run folders only (results.py); the verdict is verdict.py's.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from freezetune.comparison.controls import check_same_items, unequal_budgets
from freezetune.comparison.flips import task_lines
from freezetune.comparison.plots import render_plots
from freezetune.comparison.preflight import check_report_folder
from freezetune.comparison.results import FIELDS, base_row, group_runs
from freezetune.comparison.strategies import parse_strategy
from freezetune.comparison.timing import timing_breakdown, timing_line
from freezetune.comparison.verdict import choose_metric, decide
from freezetune.comparison.wording import recommend
from freezetune.errors import FreezetuneError
from freezetune.plans.preview import human_bytes
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json
from freezetune.runs.provenance import provenance


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if key == "exact_match":  # with its interval and the distinct items (and seeds) behind it
        lo, hi = row.get("exact_match_lo"), row.get("exact_match_hi")
        interval = f" [{100 * lo:.0f}, {100 * hi:.0f}]" if lo is not None else ""
        seeds = f" × {row['seeds_count']} seeds" if (row.get("seeds_count") or 1) > 1 else ""
        items = row.get("exact_match_items")
        return (
            f"{100 * value:.1f}%{interval} of {items} items{seeds}"
            if items
            else f"{100 * value:.1f}%"
        )
    if key == "task_drop":
        return _task_cell(row)
    if key == "preference_accuracy":  # a mean over seeds of the held-out pairs' rate
        return f"{100 * value:.1f}%"
    if row.get(f"{key}_std") is not None:  # a mean over seeds, with its spread
        return f"{value:.4g} ± {row[f'{key}_std']:.2g}"
    if key == "lr":
        # every rate the search tried, extensions included
        tried = sorted(p["lr"] for p in row.get("lr_search") or [])
        return f"{value:.3g}" + (
            f" (searched: {', '.join(f'{r:.3g}' for r in tried)})" if row.get("lr_searched") else ""
        )
    if key in ("peak_memory_bytes", "checkpoint_bytes"):
        return human_bytes(value)
    if key in ("trainable_params", "total_params"):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _task_cell(row: dict) -> str:
    """The base's accuracy per task; a run's change in points with its interval, and its flips."""
    tasks = row.get("retain_tasks") or {}
    if row.get("kind") == "base":
        return ", ".join(f"{name} {100 * t['before']:.1f}%" for name, t in tasks.items())
    ci = row.get("task_drop_ci")
    interval = f" [{-100 * ci[1]:+.1f}, {-100 * ci[0]:+.1f}]" if ci else ""
    lost = sum(t.get("right_to_wrong", 0) for t in tasks.values())
    gained = sum(t.get("wrong_to_right", 0) for t in tasks.values())
    change = -100 * row["task_drop"] + 0.0  # + 0.0: no "-0.0" for no change
    return f"{change:+.1f} pts{interval}; {lost} right→wrong, {gained} wrong→right"


TABLE = {
    "strategy": "strategy",
    "status": "status",
    "lr": "lr",
    "trainable_params": "trainable",
    "peak_memory_bytes": "peak memory",
    "step_time_s": "step s",
    "wall_time_s": "train s",
    "search_time_s": "search s",
    "checkpoint_bytes": "checkpoint",
    "eval_loss": "eval loss",
    "exact_match": "exact match [95% CI]",
    "retain_ppl_delta": "Δ retain ppl",
    "retain_kl": "KL from base",
}


def columns(table_rows: list[dict]) -> dict:
    """TABLE, with the retain-task column when the runs were scored on tasks."""
    shown = dict(TABLE)
    if any(r.get("preference_accuracy") is not None for r in table_rows):  # DPO: pairs, no answers
        del shown["exact_match"]
        shown = {
            **shown,
            "eval_loss": "eval DPO loss",
            "preference_accuracy": "preference accuracy",
        }
    if any(r.get("retain_tasks") for r in table_rows):
        shown["task_drop"] = "Δ retain-task accuracy [95% CI], flips"
    return shown


def markdown_table(table_rows: list[dict]) -> str:
    """The report's table in Markdown (the README's demo table is this, rendered from a committed results.json)."""
    shown = columns(table_rows)
    header = "| " + " | ".join(shown.values()) + " |\n|" + "---|" * len(shown) + "\n"
    return header + "".join(
        "| " + " | ".join(_cell(k, r) for k in shown) + " |\n" for r in table_rows
    )


def measured_line(where: dict) -> str:
    """One line of provenance for the reader: when, on what, with which code."""
    code = (
        f"commit {where['commit'][:10]}"
        + (" with uncommitted changes" if where["uncommitted_changes"] else "")
        if where["commit"]
        else f"freezetune {where['versions']['freezetune']}"
    )
    known = where["versions"]
    versions = ", ".join(
        f"{name} {known[name]}" for name in ("torch", "transformers", "peft") if known.get(name)
    )
    machine = f"{where['gpu'] or where['cpu']} ({where['cpu_cores']} cores)"
    return f"Measured {where['date']} on {machine}, {code}; {versions}."


def reported_runs(paths: list[Path]) -> list[Path]:
    """Run folders as given, with a `compare` output folder standing for its reported runs: each
    strategy's seeds, in the comparison's order (its search runs are not in a report)."""
    runs = []
    for path in paths:
        record = path / "compare.json"
        if (path / "manifest.json").exists() or not record.is_file():
            runs.append(path)
            continue
        found = [
            seed
            for name in (read_json(record) or {}).get("strategies") or []
            for seed in sorted(
                (path / "runs" / parse_strategy(name).slug).glob("seed-*"),
                key=lambda d: int(d.name.removeprefix("seed-")),
            )
        ]
        if not found:
            raise FreezetuneError(f"{path} is a comparison folder with no reported run yet")
        runs += found
    return runs


def fixed_metric(run_dirs: list[Path]) -> tuple[str, str] | None:
    """(metric, reason) that the comparison of every run fixed before training, where all are one
    comparison's runs (or several that agree); else None."""
    if not run_dirs or not all(Path(d).name.startswith("seed-") for d in run_dirs):
        return None
    folders = {Path(d).resolve().parents[2] for d in run_dirs}  # OUT/runs/<strategy>/seed-N
    verdicts = [(read_json(f / "results.json") or {}).get("verdict") or {} for f in folders]
    # a comparison without a verdict yet, or one re-ranked after training, fixed nothing
    if not all(
        v.get("metric") and v.get("metric_chosen", "before training") == "before training"
        for v in verdicts
    ):
        return None
    fixed = {(v["metric"], v.get("metric_reason")) for v in verdicts}
    return fixed.pop() if len(fixed) == 1 else None


def write_report(
    run_dirs: list[Path],
    out: Path,
    title: str = "freezetune comparison",
    metric: str = "auto",
    margins: dict | None = None,
    wall_s: float | None = None,
    where: dict | None = None,
    forgetting: str = "kl",
    metric_after: bool = False,
) -> Path:
    """``metric``: the quality metric that ranks; "auto" decides from the runs' task (their config),
    never their results. ``metric_after``: ``metric`` was given once the runs had finished
    (`freezetune report --metric`): unless their comparison fixed the same one, the verdict says so.
    ``margins``: verdict.decide's, in place of its defaults. ``wall_s``: how long the `compare` that wrote it ran
    (this invocation only: runs kept from an earlier one are not in it). ``where``: its provenance, taken when it
    started (default: now). ``forgetting``: the verdict's forgetting axis, "kl" or "tasks"."""
    check_report_folder(out)
    check_same_items(run_dirs)
    rows = group_runs([Path(d) for d in run_dirs])
    base = base_row([Path(d) for d in run_dirs])
    table_rows = ([base] if base else []) + rows
    config = (
        (read_json(Path(run_dirs[0]) / "manifest.json", missing={}) or {}).get("config") or {}
        if run_dirs
        else {}
    )
    chosen, why = choose_metric(
        metric, config.get("objective", "sft"), config.get("eval_generate") or 0
    )
    when, fixed = "before training", fixed_metric(run_dirs) if metric_after else None
    if fixed and (metric == "auto" or fixed[0] == chosen):
        # a comparison's runs rank by what it fixed before training, not by auto's rule again
        chosen, why = fixed
    elif metric_after and metric != "auto":
        # a metric picked with the results in view is no longer one fixed before them
        when, why = "after training", "asked for with report --metric once the runs had finished"
    verdict = decide(rows, chosen, why, margins, forgetting, when)
    # once the verdict holds: a refused report leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(
        rows, out / "plots", [r for r in rows if r["strategy"] in verdict["frontier"]], verdict
    )
    advice = recommend(rows, verdict) + unequal_budgets(run_dirs)
    flipped = task_lines(rows)
    results = {
        "provenance": where or provenance(),
        "invocation_wall_s": wall_s,
        "timing": timing_breakdown([Path(d) for d in run_dirs], wall_s),
        "base": base,
        "runs": rows,
        "verdict": verdict,
        "recommendation": advice,
        "aggregation": "per strategy: eval loss, retain KL and exact match as means over seeds of the same items "
        "(with _std over seeds, and _ci: a 95% interval over items and seeds from the paired mixed model of "
        "verdict.tests), peak memory the largest seed's, times the mean",
    }
    write_json(out / "results.json", results)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)
    markdown = (
        f"# {title}\n\n{measured_line(results['provenance'])}\n\n{markdown_table(table_rows)}\n## Verdict\n\n"
        + "".join(f"- {line}\n" for line in advice)
        + ("\n## Retain tasks\n\n" + "".join(f"- {line}\n" for line in flipped) if flipped else "")
        + f"\n{timing_line(results['timing'])}\n"
    )
    markdown += "\n" + "".join(f"![{name}](plots/{name}.png)\n\n" for name in plots)
    (out / "report.md").write_text(markdown)
    shown = columns(table_rows)
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(k, r))}</td>" for k in shown) + "</tr>"
        for r in table_rows
    )
    tasks_html = (
        "<h2>Retain tasks</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in flipped)
        + "</ul>"
        if flipped
        else ""
    )
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name, data in plots.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:2em 0}}.scroll{{overflow-x:auto}}</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="scroll"><table><thead><tr>{"".join(f"<th>{html.escape(v)}</th>" for v in shown.values())}</tr></thead>
<tbody>{cells}</tbody></table></div>
<h2>Verdict</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in advice)}</ul>
{tasks_html}
<p>{html.escape(timing_line(results["timing"]))}</p>
{images}
</body></html>
"""
    (out / "report.html").write_text(page)
    return out / "report.html"
