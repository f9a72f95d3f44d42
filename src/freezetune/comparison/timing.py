"""Where a comparison's time went, from what its runs recorded: a breakdown in seconds that shows
how much of `compare` was training and how much everything around it.

Each run folder holds its steps' times (metrics.jsonl) and timing.json, which the worker writes
when the run is done: ``loading`` (session and loop set-up: model, data, checks), ``evaluation``
(the eval-loss pass after training), ``generation`` (the answers behind exact match), ``retain``
(forgetting, measured on the merged model), ``tasks`` (the retain tasks, when asked) and ``run``
(all of it). base-timing.json holds the base model's reference (its evaluation and retain
distributions) and its retain-task scoring; advice.json what advise strategies spent before any
run (their probe and pilot runs), kept apart from training. ``other`` is what the
invocation's wall time leaves: worker start-up and imports, checkpoint writes, the report.
"""

from __future__ import annotations

from pathlib import Path

from freezetune.comparison.advised import advice_seconds
from freezetune.runs.manifest import read_json, step_seconds

PHASES = (
    "training",
    "search",
    "evaluation",
    "generation",
    "retain",
    "tasks",
    "loading",
    "base",
    "advice",
)


def timing_breakdown(run_dirs: list[Path], wall_s: float | None) -> dict:
    """Seconds per phase over the strategies of ``run_dirs`` (their seed runs and their search runs),
    with ``total`` (``wall_s``, this invocation's wall time) and ``other``. A comparison resumed from
    an earlier invocation counts its runs' seconds but only this invocation's wall time: then
    ``other`` is None and ``complete`` False."""
    seconds = dict.fromkeys(PHASES, 0.0)
    # a comparison's seed run stands for its strategy's seeds and searches; a `train` run, itself
    groups = sorted({Path(d).parent for d in run_dirs if Path(d).name.startswith("seed-")})
    runs = [d for g in groups for d in (*sorted(g.glob("seed-*")), *sorted(g.glob("search/lr-*")))]
    runs += [Path(d) for d in run_dirs if not Path(d).name.startswith("seed-")]
    timed = 0
    for run_dir in runs:
        seconds["search" if run_dir.parent.name == "search" else "training"] += step_seconds(
            run_dir
        )
        recorded = read_json(run_dir / "timing.json") or {}
        timed += bool(recorded)
        for phase in ("evaluation", "generation", "retain", "tasks", "loading"):
            seconds[phase] += recorded.get(phase, 0.0)
    # OUT/runs/<strategy>: OUT holds the base's timing
    comparisons = {g.parent.parent for g in groups}
    for comparison in comparisons:
        base = read_json(comparison / "base-timing.json") or {}
        seconds["base"] += base.get("base", 0.0)
        seconds["tasks"] += base.get("tasks", 0.0)
        # advise strategies: their probe, pilots and retain set
        seconds["advice"] += advice_seconds(comparison)
    measured = sum(seconds.values())
    other = wall_s - measured if wall_s is not None and wall_s >= measured else None
    trained = seconds["training"] + seconds["search"]
    complete = other is not None and timed == len(runs)
    return {
        **{phase: round(value, 3) for phase, value in seconds.items()},
        "other": None if other is None else round(other, 3),
        "total": None if wall_s is None else round(wall_s, 3),
        # over runs that earlier invocations trained, this one's wall time would be a meaningless ratio
        "total_over_training": round(wall_s / trained, 2) if complete and trained else None,
        "runs": len(runs),
        "runs_timed": timed,
        "complete": complete,
    }


def timing_line(timing: dict) -> str:
    """The breakdown in one line of the report."""
    shown = [
        f"{phase} {_seconds(timing[phase])}" for phase in (*PHASES, "other") if timing.get(phase)
    ]
    total = timing.get("total")
    ratio = timing.get("total_over_training")
    if total is not None and timing.get("complete"):
        head = f"Time: {total:.0f} s in all" + (
            f" ({ratio:.1f}x the training and search steps)" if ratio else ""
        )
    elif total is not None:  # a resumed or re-rendered comparison: its runs ran (partly) before
        head = f"Time: {total:.0f} s in this invocation; the runs, some trained by an earlier one"
    else:
        head = "Time (runs only)"
    return f"{head}: {', '.join(shown)}." if shown else f"{head}: none recorded."


def _seconds(value: float) -> str:
    # a short run's steps took 0.03 s in all: "0 s" said they took nothing
    return f"{value:.0f} s" if value >= 10 else f"{value:.2g} s"
