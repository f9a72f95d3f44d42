"""Running a comparison: the base reference once, then per strategy a learning-rate search (one
worker process) and one run per seed (a worker process each, so each peak memory is its own)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from freezetune.comparison.advised import advise_strategies
from freezetune.comparison.preflight import fingerprint, validate
from freezetune.comparison.rate_search import choose_rate
from freezetune.comparison.reference import base_reference
from freezetune.comparison.settings import CompareSettings, run_config
from freezetune.comparison.strategies import Strategy
from freezetune.comparison.worker import STOPPED, finished, release_memory
from freezetune.distributed.processes import die_with_parent
from freezetune.errors import FreezetuneError
from freezetune.runs.durable import write_json
from freezetune.runs.lock import lock_folder
from freezetune.runs.manifest import meaning_hashes, read_manifest
from freezetune.training.resume import changed_setting


def _launch(spec: dict, spec_path: Path, should_stop: Callable[[], bool]) -> str:
    """Run a worker on ``spec``; "done", "stopped", or why the process died. A stop request is
    passed on as one SIGTERM (the worker checkpoints); an exception here kills the worker."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, spec)
    process = subprocess.Popen(
        [sys.executable, "-m", "freezetune.comparison.worker", str(spec_path)],
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),
    )
    forwarded = False
    try:
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if should_stop() and not forwarded:
                    process.send_signal(signal.SIGTERM)
                    forwarded = True
    except BaseException:  # a second Ctrl-C: the worker must not outlive the comparison
        process.kill()
        process.wait()
        raise
    if code == 0:
        return "done"
    if code in (STOPPED, 130) or forwarded:
        return "stopped"
    return f"its worker process ended with {f'signal {signal.Signals(-code).name}' if code < 0 else f'status {code}'}"


def _set_aside_stale(configs, log) -> None:
    """A run trained (or started) with other settings is never reused nor resumed: it is kept under
    another name (it was the user's result, and is not deleted unasked) and trained again."""
    for config in configs:
        run_dir = Path(config.out)
        try:
            saved = read_manifest(run_dir).get("config") or {}
        except FreezetuneError:
            continue  # no run there yet (or only a failure record): nothing to reuse
        changed = changed_setting(saved, config, config.to_dict())
        if changed:
            number = 1
            while (aside := run_dir.with_name(f"{run_dir.name}.stale-{number}")).exists():
                number += 1
            run_dir.rename(aside)
            config.resume = None
            log(
                f"{run_dir}: the run there used another {changed}; kept as {aside.name}, training again"
            )


def _run_group(
    settings: CompareSettings,
    strategy: Strategy,
    configs,
    measure: str,
    reference: dict,
    log,
    should_stop,
    announce: str | None = None,
) -> str:
    """The runs of ``configs`` not yet finished, in worker processes: "kept" (none was left to run),
    "done", "stopped", or why a worker died."""
    _set_aside_stale(configs, log)
    asked = settings.task_request()
    pending = [c for c in configs if not finished(Path(c.out), measure, asked)]
    if not pending:
        return "kept"
    if announce:
        log(announce)
    spec = {
        "strategy": strategy.name,
        "kind": strategy.kind,
        "reference": reference,
        "keep_checkpoints": settings.keep_checkpoints,
        "retain": {
            "examples": str(settings.out / "retain.json"),
            "base": str(settings.out / "retain-base.safetensors"),
        },
        "tasks": asked,
    }
    # a reported run's peak memory is measured, so each gets a fresh process; search runs share one
    batches = [[c] for c in pending] if measure == "reported" else [pending]
    for batch in batches:
        if should_stop():
            outcome = "stopped"
            break
        spec["runs"] = [{"config": c.to_dict(), "measure": measure} for c in batch]
        outcome = _launch(
            spec, settings.out / "runs" / strategy.slug / f"worker-{measure}.json", should_stop
        )
        if outcome != "done" and not all(finished(Path(c.out), measure, asked) for c in batch):
            break
    # a stop that came as the worker ended changes nothing
    if all(finished(Path(c.out), measure, asked) for c in pending):
        return "done"
    if outcome not in ("done", "stopped"):  # killed (out of memory?): say so in each unfinished run
        for config in pending:
            if not finished(Path(config.out), measure, asked):
                Path(config.out).mkdir(parents=True, exist_ok=True)
                write_json(
                    Path(config.out) / "failed.json",
                    {"strategy": strategy.name, "kind": strategy.kind, "reason": outcome},
                )
    return outcome


def run_comparison(
    settings: CompareSettings,
    log: Callable[[str], None] = print,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    notes: tuple[str, ...] = (),
    metric: str = "auto",
) -> list[Path]:
    """Run every strategy not yet finished; returns the seed run folders of the strategies reached
    (when ``should_stop`` interrupts, the running worker checkpoints first). ``notes``: said once the
    settings are known to be good; ``metric``: the one the report will rank by."""
    loaded, base_sha256 = validate(settings, metric)
    for note in notes:
        log(note)
    lock = lock_folder(settings.out, "comparison")  # its workers each hold their own run folder
    if lock.notice:
        log(lock.notice)
    try:
        advise_strategies(settings, loaded, log)
        return _compare(settings, loaded, base_sha256, log, progress, should_stop)
    finally:
        lock.release()


def _compare(
    settings: CompareSettings, loaded, base_sha256: str, log, progress: bool, should_stop
) -> list[Path]:
    write_json(
        settings.out / "compare.json",
        {
            "fingerprint": fingerprint(settings, base_sha256, meaning_hashes(loaded.path)),
            "strategies": [s.name for s in settings.strategies],
        },
    )
    reference = base_reference(settings, loaded, log, progress)
    del loaded
    release_memory()
    run_dirs: list[Path] = []
    for number, strategy in enumerate(settings.strategies, start=1):
        if should_stop():
            log(f"stopped before {strategy.name}; run the same command again to continue")
            return run_dirs
        header = f"[{number}/{len(settings.strategies)}] {strategy.name}"
        searched_before = (settings.out / "runs" / strategy.slug / "search.json").is_file()
        log(header)

        def train_search(configs, announce, strategy=strategy):
            return _run_group(
                settings, strategy, configs, "search", reference, log, should_stop, announce
            )

        rate = choose_rate(settings, strategy, train_search, log)
        if rate is None:
            log(f"{strategy.name}: stopped; run the same command again to continue")
            return run_dirs
        folders = [
            settings.out / "runs" / strategy.slug / f"seed-{seed}" for seed in settings.seeds
        ]
        run_dirs += folders
        if isinstance(rate, str):  # no rate to train with: the strategy's row says why
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
                write_json(
                    folder / "failed.json",
                    {"strategy": strategy.name, "kind": strategy.kind, "reason": rate},
                )
            log(f"{strategy.name}: failed: {rate}")
            continue
        configs = [run_config(settings, strategy, rate, seed) for seed in settings.seeds]
        outcome = _run_group(settings, strategy, configs, "reported", reference, log, should_stop)
        if outcome == "stopped":
            log(f"{strategy.name}: stopped; run the same command again to continue")
            return run_dirs
        if outcome == "kept" and searched_before:
            log(f"{header}: finished earlier, kept")
    return run_dirs
