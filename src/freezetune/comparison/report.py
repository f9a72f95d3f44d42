"""The comparison report, from run folders only (no model is loaded): numbers, plots, a verdict.

Writes report.html (one file, plots embedded), report.md (+ plots/*.png), results.json and
results.csv. The recommendation is computed from the measured numbers: which runs sit on
the quality-vs-forgetting Pareto frontier, and what each dominated run costs against the
run that beats it.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from freezetune.comparison.plots import render_plots
from freezetune.errors import FreezetuneError
from freezetune.plans.preview import human_bytes
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json, read_metrics

FIELDS = ["strategy", "kind", "status", "reason", "trainable_params", "total_params", "peak_memory_bytes",
          "step_time_s", "tokens_per_s", "wall_time_s", "checkpoint_bytes", "eval_loss", "eval_perplexity",
          "exact_match", "exact_match_examples", "retain_ppl", "retain_ppl_delta", "retain_kl", "run_dir"]


def _read_json(path: Path) -> dict | None:
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise FreezetuneError(f"{path}: damaged, expected a JSON object")
    return value


def read_run(run_dir: Path) -> dict:
    """One results row from a run folder: manifest, metrics, eval and forgetting files."""
    manifest = _read_json(run_dir / "manifest.json")
    failed = _read_json(run_dir / "failed.json")
    if manifest is None and failed is None:
        raise FreezetuneError(f"{run_dir} is not a freezetune run: no manifest.json")
    measured = _read_json(run_dir / "forgetting.json") or {}
    config = (manifest or {}).get("config", {})
    default_name = "lora" if config.get("lora_r") else "; ".join((manifest or {}).get("plan", []))
    row = dict.fromkeys(FIELDS)
    row.update(strategy=measured.get("strategy") or (failed or {}).get("strategy") or default_name,
               kind=measured.get("kind") or (failed or {}).get("kind") or ("lora" if config.get("lora_r") else "plan"),
               run_dir=str(run_dir), layer_drift=measured.get("layer_drift"), loss_curve=[])
    if failed is not None:
        row.update(status="failed", reason=failed["reason"])
        return row
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    steps = [m for m in metrics if "loss" in m]
    timed = steps[1:] or steps  # the first step pays one-time costs (allocation, the first-step guard)
    evaluation = (_read_json(run_dir / "eval.json") or {}).get("after") or {}
    weights = run_dir / "trainable.safetensors"
    row.update(
        status=manifest.get("status"), trainable_params=manifest.get("trainable_params"), total_params=manifest.get("total_params"),
        peak_memory_bytes=max((m["peak_memory_bytes"] for m in steps), default=None),
        step_time_s=sum(m["step_time_s"] for m in timed) / len(timed) if timed else None,
        tokens_per_s=sum(m["tokens"] for m in timed) / sum(m["step_time_s"] for m in timed) if timed else None,
        wall_time_s=sum(m["step_time_s"] for m in steps) if steps else None,
        checkpoint_bytes=weights.stat().st_size if weights.is_file() else None,
        eval_loss=evaluation.get("eval_loss"), eval_perplexity=evaluation.get("eval_perplexity"),
        exact_match=evaluation.get("exact_match"), exact_match_examples=evaluation.get("exact_match_examples"),
        retain_ppl=measured.get("retain_ppl"),
        retain_ppl_delta=measured.get("retain_ppl_delta"), retain_kl=measured.get("retain_kl"),
        loss_curve=[[m["step"], m["loss"]] for m in steps],
        eval_curve=[[m["step"], m["eval_loss"]] for m in metrics if "eval_loss" in m],
    )
    return row


def base_row(run_dirs: list[Path]) -> dict | None:
    """The base model's reference row, from the first run that recorded its 'before' evaluation."""
    for run_dir in run_dirs:
        before = ((_read_json(run_dir / "eval.json") or {}).get("before")
                  or (_read_json(run_dir / "manifest.json") or {}).get("eval_before"))
        if before:
            measured = _read_json(run_dir / "forgetting.json") or {}
            row = dict.fromkeys(FIELDS)
            row.update(strategy="base model", kind="base", status="reference", trainable_params=0,
                       eval_loss=before.get("eval_loss"), eval_perplexity=before.get("eval_perplexity"),
                       exact_match=before.get("exact_match"), exact_match_examples=before.get("exact_match_examples"),
                       retain_ppl=measured.get("retain_ppl_base"),
                       retain_ppl_delta=0.0 if measured else None, retain_kl=0.0 if measured else None)
            return row
    return None


def quality(row: dict, use_exact_match: bool) -> tuple[float, float]:
    """Higher is better: exact match first where answers are checkable, eval loss breaks ties."""
    return (row["exact_match"] if use_exact_match else 0.0, -row["eval_loss"])


def frontier(rows: list[dict]) -> tuple[list[dict], bool, str]:
    """Finished runs no other run beats on both quality (higher) and forgetting (lower)."""
    done = [r for r in rows if r["status"] == "finished" and r["eval_loss"] is not None]
    use_em = bool(done) and all(r["exact_match"] is not None for r in done)
    cost = "retain_kl" if all(r["retain_kl"] is not None for r in done) else "peak_memory_bytes"
    on = []
    for row in done:
        beaten = any(quality(o, use_em) >= quality(row, use_em) and o[cost] <= row[cost]
                     and (quality(o, use_em) > quality(row, use_em) or o[cost] < row[cost]) for o in done if o is not row)
        if not beaten:
            on.append(row)
    return on, use_em, cost


def _q(row: dict, use_em: bool) -> str:
    loss = f"eval loss {row['eval_loss']:.4f}"
    return f"exact match {100 * row['exact_match']:.0f}%, {loss}" if use_em else loss


def _ratio(a, b) -> str:
    """Two significant digits: 0.034×, 1.5×, 12× (one decimal printed 0.034 as 0.0×)."""
    return f"{a / b:.2g}×" if a is not None and b else "n/a"


def recommend(rows: list[dict]) -> list[str]:
    on, use_em, cost = frontier(rows)
    if not on:
        return ["No run finished, so there is nothing to recommend."]
    cost_name = "KL from the base" if cost == "retain_kl" else "peak memory"
    shown = (lambda r: f"KL {r['retain_kl']:.3g}") if cost == "retain_kl" else (lambda r: f"{r['peak_memory_bytes'] / 2**30:.2f} GiB")
    lines = [f"On the frontier of quality against {cost_name}: "
             + "; ".join(f"{r['strategy']} ({_q(r, use_em)}, {shown(r)})" for r in on) + "."]
    best = max(on, key=lambda r: (quality(r, use_em), -r[cost]))
    gentlest = min(on, key=lambda r: (r[cost], tuple(-q for q in quality(r, use_em))))
    lines.append(f"Best quality: {best['strategy']}, at {_ratio(best['step_time_s'], min(r['step_time_s'] for r in on))} "
                 f"the fastest frontier step time and {best['peak_memory_bytes'] / 2**30:.2f} GiB peak memory.")
    if gentlest is not best:
        lines.append(f"Least forgetting: {gentlest['strategy']} ({shown(gentlest)}), giving up "
                     f"{_q(best, use_em)} → {_q(gentlest, use_em)}.")
    for row in rows:
        if row["status"] != "finished" or row in on or row["eval_loss"] is None:
            continue
        winner = next(o for o in on if quality(o, use_em) >= quality(row, use_em) and o[cost] <= row[cost])
        lines.append(
            f"{row['strategy']} is dominated by {winner['strategy']}: {_q(row, use_em)} vs {_q(winner, use_em)}, "
            f"{_ratio(row[cost], winner[cost])} the {cost_name}, {_ratio(row['peak_memory_bytes'], winner['peak_memory_bytes'])} "
            f"the peak memory, {_ratio(row['step_time_s'], winner['step_time_s'])} the step time."
        )
    lines += [f"{r['strategy']} failed: {r['reason']}" for r in rows if r["status"] == "failed"]
    return lines


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if key == "exact_match":  # with the number of answers behind it: 95% of 20 moves in steps of 5
        return f"{100 * value:.1f}% of {row['exact_match_examples']}" if row.get("exact_match_examples") else f"{100 * value:.1f}%"
    if key in ("peak_memory_bytes", "checkpoint_bytes"):
        return human_bytes(value)
    if key in ("trainable_params", "total_params"):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


TABLE = {"strategy": "strategy", "status": "status", "trainable_params": "trainable", "peak_memory_bytes": "peak memory",
         "step_time_s": "step s", "tokens_per_s": "tokens/s", "wall_time_s": "train s", "checkpoint_bytes": "checkpoint",
         "eval_loss": "eval loss", "exact_match": "exact match", "retain_ppl_delta": "Δ retain ppl", "retain_kl": "KL from base"}


def write_report(run_dirs: list[Path], out: Path, title: str = "freezetune comparison") -> Path:
    rows = [read_run(Path(d)) for d in run_dirs]
    base = base_row([Path(d) for d in run_dirs])
    table_rows = ([base] if base else []) + rows
    out.mkdir(parents=True, exist_ok=True)
    plots = render_plots(rows, out / "plots", frontier(rows)[0])
    advice = recommend(rows)
    write_json(out / "results.json", {"base": base, "runs": rows, "recommendation": advice})
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)
    header = "| " + " | ".join(TABLE.values()) + " |\n|" + "---|" * len(TABLE) + "\n"
    body = "".join("| " + " | ".join(_cell(k, r) for k in TABLE) + " |\n" for r in table_rows)
    markdown = f"# {title}\n\n{header}{body}\n## Recommendation\n\n" + "".join(f"- {line}\n" for line in advice)
    markdown += "\n" + "".join(f"![{name}](plots/{name}.png)\n\n" for name in plots)
    (out / "report.md").write_text(markdown)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r))}</td>" for k in TABLE) + "</tr>" for r in table_rows)
    images = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name.replace("_", " ")}</figcaption></figure>'
                     for name, data in plots.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:2em 0}}.scroll{{overflow-x:auto}}</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="scroll"><table><thead><tr>{"".join(f"<th>{html.escape(v)}</th>" for v in TABLE.values())}</tr></thead>
<tbody>{cells}</tbody></table></div>
<h2>Recommendation</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in advice)}</ul>
{images}
</body></html>
"""
    (out / "report.html").write_text(page)
    return out / "report.html"
