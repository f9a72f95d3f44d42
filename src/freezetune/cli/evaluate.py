"""`freezetune evaluate`: benchmark tasks on a run folder or a model, in memory and offline. A run
is scored beside its base model, so the answer is what the tuning changed: accuracy before and
after, and the items that went right to wrong and wrong to right."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from freezetune.cli.console import say
from freezetune.options.commands import EvaluateOptions


def run_evaluate(options: EvaluateOptions) -> str:
    import torch

    from freezetune.comparison.benchmarks import load_tasks, score_tasks
    from freezetune.comparison.flips import flips
    from freezetune.training.sources import base_of, load_source

    cache = Path(options.cache_dir) if options.cache_dir else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the built-in quiz is written where lm-eval reads it, and gone afterwards
    with tempfile.TemporaryDirectory(prefix="freezetune-tasks-") as folder:
        load_tasks(options.tasks, Path(folder), "--tasks")  # a bad name fails before a model loads
        # a run or an adapter is scored beside its base: what training changed, item by item
        base = base_of(options.source)
        models = {"base": base, "run": options.source} if base else {"model": options.source}
        scores = {}
        for role, source in models.items():
            loaded = load_source(source, cache)
            say(f"scoring the {role} ({source}) on {', '.join(options.tasks)}")
            scores[role] = score_tasks(
                loaded.model.to(device),
                loaded.tokenizer,
                options.tasks,
                Path(folder),
                options.limit,
                options.batch_size,
                progress=True,
                flag="--tasks",
            )
            del loaded
    changes = flips(scores["base"], scores["run"]) if "run" in scores else None
    if options.json:
        return json.dumps({"source": options.source, **scores, "flips": changes}, indent=1)
    if changes is None:
        tasks = scores["model"]["tasks"]
        return "\n".join(
            f"{name}: {100 * t['accuracy']:.1f}% of {len(t['items'])} items ({t['metric']})"
            for name, t in tasks.items()
        )
    return "\n".join(
        f"{name}: {100 * c['before']:.1f}% -> {100 * c['after']:.1f}% of {c['items']} items; "
        f"{len(c['right_to_wrong'])} right -> wrong, {len(c['wrong_to_right'])} wrong -> right"
        for name, c in changes.items()
    )
