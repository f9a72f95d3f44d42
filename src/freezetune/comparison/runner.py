"""Running a comparison: the base reference once, then per strategy a learning-rate search (one
worker process) and one run per seed (a worker process each, so each peak memory is its own)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from freezetune.comparison.forgetting import base_distributions, build_retain
from freezetune.comparison.preflight import fingerprint, validate
from freezetune.comparison.settings import CompareSettings, run_config
from freezetune.comparison.strategies import Strategy
from freezetune.comparison.worker import STOPPED, finished, release_memory
from freezetune.data.examples import pad_token_id
from freezetune.data.loading import load_data
from freezetune.distributed.processes import die_with_parent
from freezetune.errors import FreezetuneError
from freezetune.models.loading import file_sha256
from freezetune.runs.checkpoint import read_metadata, read_tensors, save_trainable
from freezetune.runs.durable import set_aside, write_json, write_text
from freezetune.runs.lock import lock_folder
from freezetune.runs.manifest import meaning_hashes, read_json, read_manifest, read_metrics
from freezetune.training.evaluation import evaluate_model
from freezetune.training.session import changed_setting

# a search whose best rate sits at its grid's edge tries one more rate this much further out
EXTEND_FACTOR = 4


def _retain_damage(retain: Path, reference: Path) -> str | None:
    """Why the retain set cannot be trusted: a file that fails its checksum, or examples that are not the
    ones the base's distributions were computed on."""
    try:
        recorded = read_metadata(reference).get("retain_sha256")
        read_tensors(reference)
    except FreezetuneError as exc:
        return str(exc).split(": ", 1)[-1] if ": " in str(exc) else str(exc)
    if not retain.is_file():
        return f"{retain.name} is missing"
    if recorded is not None and file_sha256(retain) != recorded:
        return f"{retain.name} is not the file its distributions were computed on"
    return None


def _reference(settings: CompareSettings, loaded, log, progress: bool) -> dict:
    """The base model's evaluation (every run's "before") and its retain distributions, computed once
    per output folder and kept on disk: the runs never need the base model resident."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer = loaded.model.to(device).eval(), loaded.tokenizer
    path = settings.out / "base.json"
    if not path.is_file():
        config = settings.base_config
        _, held, _ = load_data(
            tokenizer,
            config.objective,
            config.data,
            config.eval_data,
            config.seq_len,
            config.validation,
        )
        log("evaluating the base model once, as the reference row")
        measured = evaluate_model(
            base,
            tokenizer,
            held.examples,
            settings.base_config,
            device,
            label="base",
            progress=progress,
        )
        write_text(
            settings.out / "base-items.jsonl",
            "".join(json.dumps(i) + "\n" for i in measured.pop("items")),
        )
        write_json(path, {**measured, "label": "before"})
    retain, reference = settings.out / "retain.json", settings.out / "retain-base.safetensors"
    if reference.is_file() and (why := _retain_damage(retain, reference)):
        for damaged in (p for p in (retain, reference) if p.is_file()):
            log(
                f"warning: {damaged} set aside as {set_aside(damaged).name} ({why}); the retain set is built again"
            )
    if not reference.is_file():
        examples = build_retain(
            base,
            tokenizer,
            settings.base_config.seq_len,
            device,
            settings.retain,
            progress=progress,
        )
        write_json(retain, [vars(e) for e in examples])
        save_trainable(
            base_distributions(
                base,
                examples,
                settings.base_config.batch_size,
                pad_token_id(tokenizer),
                device,
                progress=progress,
            ),
            reference,
            {"retain_sha256": file_sha256(retain)},
        )
    return {k: v for k, v in read_json(path).items() if k != "answers"}


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
    pending = [c for c in configs if not finished(Path(c.out), measure)]
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
        if outcome != "done" and not all(finished(Path(c.out), measure) for c in batch):
            break
    # a stop that came as the worker ended changes nothing
    if all(finished(Path(c.out), measure) for c in pending):
        return "done"
    if outcome not in ("done", "stopped"):  # killed (out of memory?): say so in each unfinished run
        for config in pending:
            if not finished(Path(config.out), measure):
                Path(config.out).mkdir(parents=True, exist_ok=True)
                write_json(
                    Path(config.out) / "failed.json",
                    {"strategy": strategy.name, "kind": strategy.kind, "reason": outcome},
                )
    return outcome


def _val_loss(run_dir: Path) -> tuple[float | None, str | None]:
    failed = read_json(run_dir / "failed.json")
    if failed:
        return None, failed.get("reason")
    loss = ((read_json(run_dir / "eval.json") or {}).get("after") or {}).get("eval_loss")
    return (
        (loss, None)
        if loss is not None and math.isfinite(loss)
        else (None, "no finite validation loss")
    )


def _search_results(grid: list[float], configs) -> list[dict]:
    results = []
    for rate, config in zip(grid, configs):
        loss, reason = _val_loss(Path(config.out))
        steps = (
            read_metrics(Path(config.out) / "metrics.jsonl")
            if (Path(config.out) / "metrics.jsonl").is_file()
            else []
        )
        results.append(
            {
                "lr": rate,
                "val_loss": loss,
                "reason": reason,
                "train_s": sum(m.get("step_time_s", 0) for m in steps),
            }
        )
    return results


def _choose_rate(
    settings: CompareSettings, strategy: Strategy, reference: dict, log, should_stop
) -> float | str | None:
    """The strategy's rate: given, or the search's best by validation loss. None: stopped;
    a string: why the search failed."""
    group = settings.out / "runs" / strategy.slug
    given = settings.given_rate(strategy)
    if given is not None:
        group.mkdir(parents=True, exist_ok=True)
        write_json(
            group / "search.json", {"strategy": strategy.name, "chosen": given, "results": []}
        )
        return given
    grid = settings.search_grid(strategy)
    announce = (
        f"{strategy.name}: searching the learning rate over {', '.join(f'{r:g}' for r in grid)} "
        f"({settings.search_steps} steps each, scored on {settings.validation} validation examples)"
    )
    extended: list[float] = []
    while True:
        configs = [run_config(settings, strategy, rate) for rate in grid]
        outcome = _run_group(
            settings, strategy, configs, "search", reference, log, should_stop, announce
        )
        if outcome == "stopped":
            return None
        results = _search_results(grid, configs)
        scored = [r for r in results if r["val_loss"] is not None]
        if not scored:
            return (
                f"every rate of the search failed (lr {results[0]['lr']:g}: {results[0]['reason']})"
            )
        chosen = min(scored, key=lambda r: r["val_loss"])["lr"]
        # the best may lie beyond the grid: extend it that way before choosing, a bounded number of times
        edge = chosen in (grid[0], grid[-1]) and len(grid) > 1
        if not edge or len(extended) >= settings.search_extensions:
            break
        step = EXTEND_FACTOR if chosen == grid[-1] else 1 / EXTEND_FACTOR
        extended.append(float(f"{chosen * step:.3g}"))
        announce = (
            f"{strategy.name}: lr {chosen:g} is the {'highest' if step > 1 else 'lowest'} rate tried; "
            f"extending the search to {extended[-1]:g}"
        )
        grid = sorted(grid + extended[-1:])
    train_s = sum(r["train_s"] for r in results)
    write_json(
        group / "search.json",
        {
            "strategy": strategy.name,
            "grid": grid,
            "extended": extended,
            "steps": settings.search_steps,
            "validation": settings.validation,
            "results": results,
            "chosen": chosen,
            "train_s": train_s,
            "at_grid_edge": edge,
        },
    )
    log(
        f"{strategy.name}: lr {chosen:g} chosen (validation loss "
        + ", ".join(
            f"{r['lr']:g}: {r['val_loss']:.4f}"
            if r["val_loss"] is not None
            else f"{r['lr']:g}: failed"
            for r in results
        )
        + f"; the search trained for {train_s:.0f} s)"
        + (
            f"; it is still the {'highest' if chosen == grid[-1] else 'lowest'} rate "
            f"after {len(extended)} extension(s), "
            "so a wider --lr-grid or more --search-extensions may find a better one"
            if edge
            else ""
        )
    )
    return chosen


def run_comparison(
    settings: CompareSettings,
    log: Callable[[str], None] = print,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    notes: tuple[str, ...] = (),
) -> list[Path]:
    """Run every strategy not yet finished; returns the seed run folders of the strategies reached
    (when ``should_stop`` interrupts, the running worker checkpoints first). ``notes``: said once the
    settings are known to be good."""
    loaded, base_sha256 = validate(settings)
    for note in notes:
        log(note)
    lock = lock_folder(settings.out, "comparison")  # its workers each hold their own run folder
    if lock.notice:
        log(lock.notice)
    try:
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
    reference = _reference(settings, loaded, log, progress)
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
        rate = _choose_rate(settings, strategy, reference, log, should_stop)
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
