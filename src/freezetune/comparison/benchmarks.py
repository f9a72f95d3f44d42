"""Benchmark tasks (lm-evaluation-harness) scored on the model already in memory: no export, no
second process. This is how papers and most fine-tuning tools report forgetting (accuracy on
multiple-choice tasks before and after); here every item's 0/1 is kept, with its id, so that
the flips (right to wrong, wrong to right) and the verdict's paired statistics come from files.

Offline first: a task is ``builtin`` (data/quiz.py, written next to the comparison), a task
config file (YAML) whose data is on disk, or a registered lm-eval task whose data is already in
the local datasets cache. Tasks load with the Hub switched off, so a task that would need a
download is a one-line error naming it, never a hang. lm-eval is an optional extra.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from freezetune.data.quiz import quiz_items
from freezetune.errors import FreezetuneError
from freezetune.runs.durable import write_text

INSTALL = "pip install 'freezetune[eval]'"
BUILTIN = "builtin"
# the per-item 0/1 metrics a task may report, in the order they are preferred
ITEM_METRICS = ("acc", "exact_match")


def scoring_batch(batch_size: int) -> int:
    """Requests per forward pass when scoring after training at ``batch_size``: without gradients
    four times as many fit, and at the training batch of 4 the quiz took 1.4x as long (measured)."""
    return 4 * batch_size


def require_lm_eval(flag: str = "--retain-tasks") -> None:
    """A one-line error, before anything runs, when lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise FreezetuneError(
            f"{flag} needs lm-evaluation-harness, which is not installed: {INSTALL}"
        ) from None


def builtin_config(folder: Path) -> dict:
    """The built-in quiz as an lm-eval task config, its items written (once) under ``folder``."""
    data = folder / "builtin-quiz.jsonl"
    text = "".join(json.dumps(item) + "\n" for item in quiz_items())
    if not data.is_file() or data.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(data, text)
    return {
        "task": "freezetune_builtin",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


@contextmanager
def _hub_off():
    """The Hub switched off for datasets and huggingface_hub while tasks load, restored after:
    missing data fails at once instead of being fetched (or hanging where there is no network)."""
    import datasets
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


@contextmanager
def _quiet():
    """lm-eval's notices (it warns that it was handed a model object, which is the point) held back."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_tasks(names: list[str], folder: Path, flag: str = "--retain-tasks") -> dict:
    """lm-eval Task objects by their task name, for ``names`` (``builtin``, a YAML file, or a
    registered task or group); a one-line error, naming ``flag``, for a name it does not know or
    data it would fetch."""
    require_lm_eval(flag)
    from lm_eval.tasks import TaskManager

    # scored once either way: a second mention would look like weight it does not get
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise FreezetuneError(f"{flag} {twice} is given twice; give each task once")

    registered = [n for n in names if n != BUILTIN and not n.endswith((".yaml", ".yml"))]
    # indexing lm-eval's own thousands of task files takes seconds: only when a name needs it
    manager = TaskManager(include_defaults=bool(registered))
    tasks: dict = {}
    for name in names:
        if name == BUILTIN:
            spec = builtin_config(folder)
        elif name.endswith((".yaml", ".yml")):
            if not Path(name).is_file():
                raise FreezetuneError(f"{flag} {name}: no such task config file")
            spec = str(Path(name).resolve())
        elif name not in manager.all_tasks:
            raise FreezetuneError(
                f"{flag} {name}: not a task lm-eval knows (`lm-eval ls tasks` lists them); "
                "give 'builtin' or a task config file (.yaml)"
            )
        else:
            spec = name
        try:
            with _hub_off(), _quiet():
                loaded = manager.load([spec])["tasks"]
        except (ConnectionError, FileNotFoundError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise FreezetuneError(
                f"{flag} {name}: its data is not on this machine and freezetune does not "
                f"download ({reason}); load it once with the datasets library, or point a task "
                "config (.yaml) at local files"
            ) from None
        # lm-eval's own validation of a config: say which task, in one line
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200]
            raise FreezetuneError(
                f"{flag} {name}: lm-eval cannot load it: {type(exc).__name__}: {reason}"
            ) from None
        tasks.update(loaded)
    return tasks


def _item_metric(task_name: str, sample: dict) -> str:
    for metric in ITEM_METRICS:
        if metric in sample:
            return metric
    raise FreezetuneError(
        f"task {task_name}: no per-item accuracy ({' or '.join(ITEM_METRICS)}) to count flips with"
    )


def score_tasks(
    model,
    tokenizer,
    names: list[str],
    folder: Path,
    limit: int | None,
    batch_size: int,
    progress: bool = False,
    flag: str = "--retain-tasks",
) -> dict:
    """Every task's accuracy and per-item 0/1 (by lm-eval's doc id) for the model in memory:
    {"asked": {"tasks", "limit"}, "tasks": {name: {"metric", "accuracy", "items"}}, "seconds"}.
    ``limit``: the first N items of each task (the same items for every model)."""
    tasks = load_tasks(names, folder, flag)
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    class ModelInMemory(HFLM):
        """HFLM around a loaded model, with lm-eval's progress bars only when asked for."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not progress)

    started = time.perf_counter()
    model.eval()
    with _quiet():
        wrapped = ModelInMemory(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        found = evaluate(
            wrapped,
            {"tasks": tasks, "groups": {}, "group_map": {}},
            limit=limit or None,
            bootstrap_iters=0,
            log_samples=True,
            verbosity="ERROR",
        )
    scored = {}
    for name, samples in sorted((found or {}).get("samples", {}).items()):
        if not samples:
            continue
        metric = _item_metric(name, samples[0])
        items = [
            {"id": s["doc_id"], "correct": int(float(s[metric]) > 0.5), "prompt": _prompt(s)}
            for s in sorted(samples, key=lambda s: s["doc_id"])
        ]
        accuracy = sum(i["correct"] for i in items) / len(items)
        scored[name] = {"metric": metric, "accuracy": accuracy, "items": items}
    return {
        "asked": {"tasks": list(names), "limit": limit or None},
        "tasks": scored,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _prompt(sample: dict) -> str:
    """The item's question as the model saw it (the context of its first request), for the report."""
    arguments = sample.get("arguments") or []
    first = arguments[0] if arguments else None
    context = first[0] if isinstance(first, (list, tuple)) and first else ""
    return " ".join(str(context).split())[-160:]
