"""Running a comparison: the base reference once, then each strategy's run and its forgetting."""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from freezetune.comparison.forgetting import build_retain, forgetting, layer_drift
from freezetune.comparison.strategies import (
    CompareSettings,
    Strategy,
    fingerprint,
    run_config,
    validate,
)
from freezetune.data.examples import Example, pad_token_id
from freezetune.errors import FreezetuneError
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import read_json, read_manifest
from freezetune.training.evaluation import evaluate_model
from freezetune.training.export import load_run
from freezetune.training.loop import Trainer
from freezetune.training.session import changed_setting, load_data, open_session


def _retain_examples(settings: CompareSettings, base, tokenizer, device, progress: bool) -> list[Example]:
    """Built once per output folder (the base model's own answers take a while) and reused."""
    path = settings.out / "retain.json"
    if path.is_file():
        return [Example(**row) for row in read_json(path)]
    examples = build_retain(base, tokenizer, settings.base_config.seq_len, device, settings.retain, progress=progress)
    write_json(path, [vars(e) for e in examples])
    return examples


def _base_reference(settings: CompareSettings, base, tokenizer, device, log, progress: bool) -> dict:
    path = settings.out / "base.json"
    if path.is_file():
        return read_json(path)
    _, held, _ = load_data(settings.base_config, tokenizer)
    log("evaluating the base model once, as the reference row")
    reference = evaluate_model(base, tokenizer, held.examples, settings.base_config, device, label="base", progress=progress)
    reference["label"] = "before"
    write_json(path, reference)
    return reference


def _finished(run_dir: Path) -> bool:
    try:
        return read_manifest(run_dir).get("status") == "finished" and (run_dir / "forgetting.json").is_file()
    except FreezetuneError:
        return False


def _changed_setting(run_dir: Path, config) -> str | None:
    """The first setting that would train this strategy differently from the run already in ``run_dir``."""
    try:
        saved = read_manifest(run_dir).get("config") or {}
    except FreezetuneError:
        return None  # no run there yet (or only a failure record): nothing to reuse
    return changed_setting(saved, config, config.to_dict())


def _set_aside(run_dir: Path) -> Path:
    """Keep a stale run under another name: it was the user's result, and is not deleted unasked."""
    number = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.stale-{number}")).exists():
        number += 1
    run_dir.rename(aside)
    return aside


def _run_one(settings: CompareSettings, strategy: Strategy, base, pad_id: int, retain, reference, device, log,
             progress, should_stop) -> bool:
    """Train one strategy and measure it; False when a stop was requested mid-run (it checkpointed)."""
    config = run_config(settings, strategy)
    run_dir = Path(config.out)
    session = open_session(config)
    result = Trainer(session, log=log, progress=progress).run(should_stop=should_stop, before=reference)
    del session
    if result["status"] != "finished":
        return False
    tuned = load_run(run_dir, Path(config.cache_dir) if config.cache_dir else None).model.to(device)
    measured = forgetting(base, tuned, retain, config.batch_size, pad_id, device, progress=progress)
    write_json(run_dir / "forgetting.json", {"strategy": strategy.name, "kind": strategy.kind, **measured,
                                             "layer_drift": layer_drift(base, tuned)})
    log(f"{strategy.name}: retain perplexity {measured['retain_ppl_base']:.3f} -> {measured['retain_ppl']:.3f}, "
        f"KL from base {measured['retain_kl']:.4f}")
    checkpoints = run_dir / "checkpoints"
    if not settings.keep_checkpoints and checkpoints.is_dir():  # finished and measured: nothing left to resume
        size = sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(checkpoints)
        log(f"{strategy.name}: dropped its resumable checkpoints ({size / 2**20:.1f} MiB; --keep-checkpoints keeps them)")
    return True


def run_comparison(settings: CompareSettings, log: Callable[[str], None] = print, progress: bool = True,
                   should_stop: Callable[[], bool] = lambda: False) -> list[Path]:
    """Run every strategy not yet finished; returns the run folders in strategy order (those
    reached so far, when ``should_stop`` interrupts: the running one checkpoints first)."""
    loaded, base_sha256 = validate(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    write_json(settings.out / "compare.json", {"fingerprint": fingerprint(settings, base_sha256),
                                               "strategies": [s.name for s in settings.strategies]})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer = loaded.model.to(device).eval(), loaded.tokenizer
    pad_id = pad_token_id(tokenizer)
    reference = _base_reference(settings, base, tokenizer, device, log, progress)
    retain = _retain_examples(settings, base, tokenizer, device, progress)
    run_dirs = []
    for number, strategy in enumerate(settings.strategies, start=1):
        if should_stop():  # a signal during the last run's evaluation or forgetting pass: stop before the next
            log(f"stopped before {strategy.name}; run the same command again to continue")
            return run_dirs
        run_dir = settings.out / "runs" / strategy.slug
        run_dirs.append(run_dir)
        changed = _changed_setting(run_dir, run_config(settings, strategy))
        if changed:  # trained (or started) with other settings: never reused, never resumed
            aside = _set_aside(run_dir)
            log(f"[{number}/{len(settings.strategies)}] {strategy.name}: the run there used another {changed}; "
                f"kept as {aside.name}, training again")
        if _finished(run_dir):
            log(f"[{number}/{len(settings.strategies)}] {strategy.name}: finished earlier, kept")
            continue
        log(f"[{number}/{len(settings.strategies)}] {strategy.name}")
        failure = run_dir / "failed.json"
        failure.unlink(missing_ok=True)
        try:
            if not _run_one(settings, strategy, base, pad_id, retain, reference, device, log, progress, should_stop):
                log(f"{strategy.name}: stopped; run the same command again to continue")
                return run_dirs
        except Exception as exc:  # one failed strategy must not sink the others; its reason goes in the table
            reason = str(exc).splitlines()[0] if isinstance(exc, FreezetuneError) else f"{type(exc).__name__}: {exc}"
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(failure, {"strategy": strategy.name, "kind": strategy.kind, "reason": reason})
            if not isinstance(exc, FreezetuneError):
                (run_dir / "error.log").write_text(traceback.format_exc())
            log(f"{strategy.name}: failed: {reason}")
    return run_dirs
