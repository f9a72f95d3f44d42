"""Task-based forgetting from files: the base's and each run's per-item 0/1 on the benchmark tasks
(benchmarks.py wrote them), turned into accuracy before and after, the items that flipped, and
the seeds x items table the verdict tests. An item's value in that table is its drop, base minus
tuned (1: right before, wrong after); strategies pair on the same items, so the base cancels and
a difference of drops is a difference of accuracies, with the same statistics as every metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from freezetune.errors import FreezetuneError
from freezetune.runs.manifest import read_json

SHOWN_FLIPS = 3  # flipped items the report quotes per strategy and direction


def tasks_current(path: Path, asked: dict | None) -> bool:
    """Whether the scores at ``path`` (a run's tasks.json, the base's base-tasks.json) are of what
    is asked now: the same tasks and limit."""
    if not asked:
        return True
    scored = read_json(path) or {}
    return scored.get("asked") == {"tasks": asked["names"], "limit": asked["limit"]}


def flips(base: dict, tuned: dict) -> dict:
    """Per task: accuracy before and after, and the ids that went right -> wrong and wrong -> right.
    Both must have scored the same items (the same task files and limit)."""
    changes = {}
    for name, after in tuned["tasks"].items():
        before = base["tasks"].get(name)
        if before is None or [i["id"] for i in before["items"]] != [
            i["id"] for i in after["items"]
        ]:
            raise FreezetuneError(
                f"task {name}: the base and the run were scored on different items; "
                "run the comparison again"
            )
        pairs = list(zip(before["items"], after["items"]))
        changes[name] = {
            "before": before["accuracy"],
            "after": after["accuracy"],
            "items": len(pairs),
            "right_to_wrong": [b["id"] for b, a in pairs if b["correct"] and not a["correct"]],
            "wrong_to_right": [b["id"] for b, a in pairs if a["correct"] and not b["correct"]],
        }
    return changes


def flip_line(strategy: str, seed, changes: dict, seconds: float) -> str:
    """One line of the log: each task's accuracy before and after, its flips, and what it cost."""
    parts = [
        f"{name} {100 * c['before']:.1f}% -> {100 * c['after']:.1f}% "
        f"({len(c['right_to_wrong'])} right->wrong, {len(c['wrong_to_right'])} wrong->right)"
        for name, c in changes.items()
    ]
    return f"{strategy} (seed {seed}): retain tasks: {'; '.join(parts)}; scored in {seconds:.0f} s"


def base_scores(run_dirs: list[Path]) -> dict | None:
    """The base's task scores, from the comparison folder of the runs (OUT/runs/<strategy>/seed-N);
    None for runs outside one (a `train` run given as 'run', whose path has no such parents)."""
    parents = Path(run_dirs[0]).resolve().parents if run_dirs else ()
    return read_json(parents[2] / "base-tasks.json") if len(parents) > 2 else None


def _scored(run_dirs: list[Path], base: dict | None) -> list[dict] | None:
    """Every seed's task scores, when each scored what the base did (the same tasks and limit)."""
    scored = [read_json(Path(d) / "tasks.json") for d in run_dirs]
    if base is None or not scored or any(s is None or s["asked"] != base["asked"] for s in scored):
        return None
    return scored


def task_table(run_dirs: list[Path], base: dict | None) -> np.ndarray | None:
    """Seeds x items of the accuracy drop (base minus tuned, over every task's items in turn); None
    unless every seed was scored on the base's items."""
    return _drop_table(base, _scored(run_dirs, base) or [])


def _drop_table(base: dict | None, seeds: list[dict]) -> np.ndarray | None:
    rows = []
    for scored in seeds:
        changes = flips(base, scored)
        row = []
        for name in changes:
            pairs = zip(base["tasks"][name]["items"], scored["tasks"][name]["items"])
            row += [b["correct"] - a["correct"] for b, a in pairs]
        rows.append(row)
    return np.array(rows, dtype=float) if rows and rows[0] else None


def base_task_fields(base: dict | None) -> dict:
    """The base row's task columns: its accuracy on each task, nothing flipped."""
    if base is None:
        return {}
    tasks = {
        name: {"before": t["accuracy"], "after": t["accuracy"], "items": len(t["items"])}
        for name, t in base["tasks"].items()
    }
    return {"retain_tasks": tasks, "task_drop": 0.0}


def task_fields(run_dirs: list[Path], base: dict | None) -> dict:
    """A strategy's task columns: per task the accuracy before and after (mean over seeds) and the
    flips summed over seeds, a few flipped items quoted; and the mean drop, the verdict's metric."""
    scored = _scored(run_dirs, base)
    if scored is None:
        return {}
    per_seed = [flips(base, s) for s in scored]
    prompts = {
        name: {i["id"]: i.get("prompt", "") for i in task["items"]}
        for name, task in base["tasks"].items()
    }
    tasks = {}
    for name in per_seed[0]:
        seeds = [changes[name] for changes in per_seed]
        quoted = {
            way: [prompts[name].get(i, "") for i in seeds[0][way][:SHOWN_FLIPS]]
            for way in ("right_to_wrong", "wrong_to_right")
        }
        tasks[name] = {
            "before": seeds[0]["before"],
            "after": float(np.mean([c["after"] for c in seeds])),
            "items": seeds[0]["items"],
            "right_to_wrong": sum(len(c["right_to_wrong"]) for c in seeds),
            "wrong_to_right": sum(len(c["wrong_to_right"]) for c in seeds),
            "quoted": quoted,
        }
    table = _drop_table(base, scored)
    return {
        "retain_tasks": tasks,
        "task_drop": float(table.mean()) if table is not None else None,
        "task_seconds": float(np.mean([s.get("seconds", 0.0) for s in scored])),
    }


def task_lines(rows: list[dict]) -> list[str]:
    """The report's retain-task section: per strategy and task, accuracy before and after, the flips
    over all seeds, what scoring cost per run (all its tasks), and a few of the flipped questions."""
    lines = []
    for row in rows:
        for name, task in (row.get("retain_tasks") or {}).items():
            if "right_to_wrong" not in task:
                continue
            seeds = len(row.get("seeds") or [None])
            line = (
                f"{row['strategy']}, {name}: {100 * task['before']:.1f}% -> {100 * task['after']:.1f}% "
                f"of {task['items']} items (x {seeds} seed{'s' * (seeds > 1)}); "
                f"{task['right_to_wrong']} right -> wrong, {task['wrong_to_right']} wrong -> right; "
                f"the tasks took {row.get('task_seconds') or 0:.0f} s per run"
            )
            quoted = task["quoted"]["right_to_wrong"]
            if quoted:
                line += "; lost, for example: " + " | ".join(f"'{q}'" for q in quoted)
            lines.append(line)
    return lines
