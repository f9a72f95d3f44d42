"""A strategy's runs, in a process of their own (runner.py starts `python -m
freezetune.comparison.worker SPEC.json`): its search runs share one worker, each reported seed
gets a fresh one. Exit 0: all done; 3: stopped by a signal (checkpointed); 2: the spec itself was
unreadable. Failed runs are recorded in their folders, not in the status.

A fresh process is what makes a run's peak memory its own: a CPU process's high-water mark
never sinks below what earlier runs left mapped, and the base model the comparison measures
forgetting against is not resident beside it (its retain distributions are read from disk
instead). The spec is a JSON file: the runs' configs, what to measure after each, the
base's reference evaluation and where the retain set lives.
"""

from __future__ import annotations

import ctypes
import gc
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from freezetune.comparison.benchmarks import score_tasks, scoring_batch
from freezetune.comparison.flips import flip_line, flips, tasks_current
from freezetune.comparison.forgetting import forgetting, layer_drift
from freezetune.config.run import TrainConfig
from freezetune.data.examples import Example, pad_token_id
from freezetune.errors import FreezetuneError
from freezetune.models.loading import load_model
from freezetune.runs.checkpoint import read_tensors
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json, read_manifest
from freezetune.runs.stop import StopFlag
from freezetune.training.export import load_run
from freezetune.training.loop import TrainingLoop
from freezetune.training.lora import merge_lora
from freezetune.training.peak_memory import current_rss_bytes
from freezetune.training.session import open_session

SEARCH_BEFORE = {
    "label": "before",
    "note": "not measured: a learning-rate search run is scored on its validation loss",
}


def finished(run_dir: Path, measure: str, tasks: dict | None = None) -> bool:
    """Trained, evaluated and (for a reported run) measured for forgetting, on the ``tasks`` asked."""
    try:
        done = read_manifest(run_dir).get("status") == "finished"
    except FreezetuneError:
        return False
    measured = (run_dir / "forgetting.json").is_file() and tasks_current(
        run_dir / "tasks.json", tasks
    )
    return done and (measure == "search" or measured)


def release_memory() -> None:
    """Hand freed memory back to the OS, so the next run's high-water mark starts low."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the next run's peak may include this one's leftovers


def as_trained(loop: TrainingLoop):
    """The model the loop has just trained, unpatched (LoRA folded in), when it is the model load_run
    would rebuild from the run folder: one process, every weight in fp32, as the base loads; else None."""
    model = loop.model
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if loop.world != 1 or any(dtype != torch.float32 for dtype in floats):
        return None
    loop.runner.remove()
    if loop.head is not None:
        loop.head.remove()
    model = merge_lora(model) if loop.config.lora_r else model
    return model.requires_grad_(False).eval(), loop.tokenizer


def _measure(
    spec: dict,
    config: TrainConfig,
    run_dir: Path,
    log,
    progress: bool,
    runtime: int | None,
    trained=None,
) -> dict:
    """Forgetting on the merged model, whichever of it is not yet measured: the retain KL and
    weight drift (forgetting.json), the benchmark tasks when asked (tasks.json). Seconds of each.
    ``trained``: the model just trained in this process and its tokenizer (as_trained), else loaded from the run."""
    cache = Path(config.cache_dir) if config.cache_dir else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if trained is None:
        run = load_run(run_dir, cache)
        trained = run.model.to(device), run.tokenizer
    tuned, tokenizer = trained
    seconds = {}
    if not (run_dir / "forgetting.json").is_file():
        started = time.perf_counter()
        _measure_kl(spec, config, run_dir, tuned, device, log, progress, runtime)
        seconds["retain"] = time.perf_counter() - started
    asked = spec.get("tasks")
    if not tasks_current(run_dir / "tasks.json", asked):
        scored = score_tasks(
            tuned,
            tokenizer,
            asked["names"],
            Path(asked["folder"]),
            asked["limit"],
            scoring_batch(config.batch_size),
            progress,
        )
        for task in scored["tasks"].values():  # the base's file quotes the questions
            task["items"] = [{"id": i["id"], "correct": i["correct"]} for i in task["items"]]
        changes = flips(read_json(Path(asked["base"])), scored)
        write_json(run_dir / "tasks.json", {**scored, "flips": changes})
        log(flip_line(spec["strategy"], config.seed, changes, scored["seconds"]))
        seconds["tasks"] = scored["seconds"]
    return seconds


def _measure_kl(
    spec: dict, config, run_dir: Path, tuned, device, log, progress: bool, runtime
) -> None:
    """Retain perplexity and KL from the base's stored distributions, and the weight drift from the
    base model (loaded here, the one part that needs it)."""
    examples = [Example(**row) for row in read_json(Path(spec["retain"]["examples"]))]
    reference = read_tensors(Path(spec["retain"]["base"]))
    loaded = load_model(config.model, Path(config.cache_dir) if config.cache_dir else None)
    pad_id = pad_token_id(loaded.tokenizer)
    measured = forgetting(
        tuned, examples, reference, config.batch_size, pad_id, device, progress=progress
    )
    write_json(
        run_dir / "forgetting.json",
        {
            "strategy": spec["strategy"],
            "kind": spec["kind"],
            **measured,
            "layer_drift": layer_drift(loaded.model.to(device), tuned),
            "runtime_rss_bytes": runtime,
        },
    )
    log(
        f"{spec['strategy']} (seed {config.seed}): retain perplexity {measured['retain_ppl_base']:.3f} -> "
        f"{measured['retain_ppl']:.3f}, KL from base {measured['retain_kl']:.4f}"
    )


def _drop_checkpoints(run_dir: Path, name: str, log) -> None:
    """A finished, measured run has nothing left to resume: its optimizer state is dead weight."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        size = sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(checkpoints)
        log(
            f"{name}: dropped the resumable checkpoints of {run_dir.name} ({size / 2**20:.1f} MiB; "
            "--keep-checkpoints keeps them)"
        )


def run_worker(
    spec: dict,
    log: Callable[[str], None] = print,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> str:
    """Train and measure each run of the spec not yet finished: "done", or "stopped" when asked to
    (the running one checkpointed). A failed run leaves failed.json and the next one goes on."""
    # what the interpreter and libraries hold before any model loads: on a CPU the report counts peak RSS
    # above it, as the step-time benchmark does (a CUDA peak is the allocator's, which never included it)
    runtime = None if torch.cuda.is_available() else current_rss_bytes()
    for item in spec["runs"]:
        config, measure = TrainConfig(**item["config"]), item["measure"]
        run_dir = Path(config.out)
        if finished(run_dir, measure, spec.get("tasks")):
            continue
        if should_stop():
            return "stopped"
        failure = run_dir / "failed.json"
        failure.unlink(missing_ok=True)
        try:
            started, seconds, trained = time.perf_counter(), {}, None
            # a run trained already (a resumed comparison) has only its forgetting left to measure
            if not finished(run_dir, "search"):
                session = open_session(config)
                before = SEARCH_BEFORE if measure == "search" else spec.get("reference")
                loop = TrainingLoop(session, log=log, progress=progress)
                # the model, the data, the checks
                seconds["loading"] = time.perf_counter() - started
                result = loop.run(should_stop=should_stop, before=before)
                # measured where it stands: no second load of the base and the trained tensors
                if result["status"] == "finished" and measure == "reported":
                    trained = as_trained(loop)
                del session, loop
                release_memory()  # the optimizer's state and the prefix cache, before measuring
                if result["status"] != "finished":
                    return "stopped"
                seconds.update(result["after"].get("seconds", {}))
            if measure == "reported":
                seconds.update(_measure(spec, config, run_dir, log, progress, runtime, trained))
            # a run measured again (tasks asked later) keeps what its training cost
            earlier = read_json(run_dir / "timing.json") or {}
            run_s = earlier.get("run", 0.0) + time.perf_counter() - started
            write_json(run_dir / "timing.json", {**earlier, **seconds, "run": run_s})
            if not spec.get("keep_checkpoints"):
                _drop_checkpoints(run_dir, spec["strategy"], log)
        # one failed run must not sink the others; its reason goes in the table
        except Exception as exc:
            reason = (
                str(exc).splitlines()[0]
                if isinstance(exc, FreezetuneError)
                else f"{type(exc).__name__}: {exc}"
            )
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                failure, {"strategy": spec["strategy"], "kind": spec["kind"], "reason": reason}
            )
            if not isinstance(exc, FreezetuneError):
                (run_dir / "error.log").write_text(traceback.format_exc())
            log(f"{spec['strategy']}: {run_dir.name} failed: {reason}")
        trained = None
        release_memory()
    return "done"


STOPPED = 3  # the exit status of a worker a signal stopped after it checkpointed


def main(argv: list[str] | None = None) -> int:
    """The worker process's entry: one line on stderr and status 2 for a spec it cannot read."""
    argv = sys.argv[1:] if argv is None else argv
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    try:
        if len(argv) != 1 or not Path(argv[0]).is_file():
            raise FreezetuneError("usage: python -m freezetune.comparison.worker SPEC.json")
        spec = json.loads(Path(argv[0]).read_text())
        import datasets

        datasets.disable_progress_bars()  # a bar per task file read is noise in the comparison's log
        with StopFlag() as stop:
            outcome = run_worker(spec, log=log, should_stop=lambda: stop.requested)
    except (FreezetuneError, json.JSONDecodeError) as exc:
        log(f"freezetune compare worker: error: {' '.join(str(exc).split())}")
        return 2
    except KeyboardInterrupt:  # a second signal: stop at once, what was saved is intact
        return 130
    return STOPPED if outcome == "stopped" else 0


if __name__ == "__main__":
    sys.exit(main())
