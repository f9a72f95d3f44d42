"""Resuming a run: the config it keeps, the flags that may change, and the checks that it goes on
with the base model and data it started with (from any working directory)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from freezetune.config.fields import flag_of
from freezetune.config.run import TrainConfig
from freezetune.data.files import content_hash
from freezetune.errors import FreezetuneError
from freezetune.runs.checkpoint import checkpoint_dirs
from freezetune.runs.manifest import check_base, findable, read_manifest

# where the frozen prefix's outputs are kept, not what they are (a cached run's losses match an uncached one's)
CACHE_SETTINGS = {"prefix_cache", "cache_dir", "cache_ram", "cache_limit"}
RESUME_MAY_CHANGE = {
    "resume",
    "out",
    "log_with",
    "show_generations",
    "num_processes",
    "fsdp",
    "zero_stage",
    *CACHE_SETTINGS,
}


def changed_setting(saved: dict, config: TrainConfig, keys) -> str | None:
    """The first of ``keys`` that would change a run's results and on which ``config`` differs from the
    run's saved config (a resume, or a comparison deciding whether a run can be reused)."""
    # a run saved before an option existed had its default
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return next(
        (
            key
            for key in keys
            if key not in RESUME_MAY_CHANGE
            and getattr(config, key) != saved.get(key, defaults.get(key))
        ),
        None,
    )


def resumed_config(config: TrainConfig, given: set[str]) -> TrainConfig:
    """The config of the run being resumed; a flag that would change its results is refused."""
    manifest = read_manifest(Path(config.resume))
    if not checkpoint_dirs(Path(config.resume)):
        raise FreezetuneError(
            f"--resume {config.resume}: the run holds no checkpoint to continue from"
        )
    saved = dict(manifest["config"])
    key = changed_setting(saved, config, sorted(given))
    if key is not None:
        was = repr(saved[key]) if saved.get(key) is not None else "none"
        if key == "plan" and saved.get(key) is None:  # it was "the resumed run's None"
            was = f"the default plan '{'; '.join(manifest.get('plan') or [])}'"
        raise FreezetuneError(
            f"{flag_of(key)} {getattr(config, key)!r} differs from the resumed run, which had "
            f"{was}; a resumed run keeps its config"
        )
    # the run's cache settings stay the run's unless given again; the rest takes this invocation's values
    kept = CACHE_SETTINGS - given
    saved.update({key: getattr(config, key) for key in RESUME_MAY_CHANGE - kept})
    paths = manifest.get("paths") or {}  # runs from before it was recorded: as typed
    saved.update({key: findable(saved.get(key), recorded) for key, recorded in paths.items()})
    return TrainConfig(**saved)


def data_hashes(config: TrainConfig) -> dict[str, str | None]:
    """The content of the data files a run reads, so that a resume can tell they are still the same."""
    return {"data": content_hash(config.data), "eval_data": content_hash(config.eval_data)}


def check_resumable(
    manifest: dict, run_dir: Path, config: TrainConfig, base_sha256: str, base_path: Path
) -> None:
    """A resumed run must continue what it started: unfinished, on the same base model (weights, config and
    tokenizer files) and the same data; each refusal names what changed."""
    if manifest.get("status") == "finished":
        raise FreezetuneError(
            f"--resume {run_dir}: the run has finished ({manifest.get('steps')} step"
            f"{'s' * (manifest.get('steps') != 1)}); nothing is "
            "left to continue (its results stay as they are; start a new run with --out)"
        )
    try:
        check_base(manifest, base_sha256, base_path, run_dir)
    except FreezetuneError as exc:
        raise FreezetuneError(f"--resume: {exc}") from None
    saved = manifest.get("data_sha256") or {}  # runs from before this check recorded none
    for key, now in data_hashes(config).items():
        if key in saved and saved[key] != now:
            raise FreezetuneError(
                f"--resume {run_dir}: the content of {flag_of(key)} {getattr(config, key)} "
                "has changed since the run started; a resumed run must see the data it started with"
            )
