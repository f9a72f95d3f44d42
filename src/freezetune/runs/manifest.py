"""A run folder's manifest, and the identity of the base model it is tied to.

The base model is identified by the sha256 of its weight files and, separately, of the
files that change what the weights mean (config.json, the tokenizer files): an edited
``rms_norm_eps`` or a swapped tokenizer is a different model even with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

from freezetune.errors import FreezetuneError
from freezetune.models.loading import DEFAULT_CACHE_DIR, file_sha256, hash_file_into
from freezetune.runs.durable import write_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# files beside the weights that change the model's behaviour, hashed one by one so a mismatch is named
MEANING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def model_hash(path: Path, cache_dir: Path | str | None = None) -> str:
    """sha256 over the weight files of an HF folder (names and bytes, in name order).

    Reading 14 GB to hash a 7B model takes minutes, and every train, resume, compare and export
    starts with it, so the result is remembered in model-hashes.json in ``cache_dir`` (the run's
    --cache-dir, else the default) by
    the folder's path and each file's name, size and modification time: a file that changes in
    any of those is hashed again."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise FreezetuneError(f"{path} holds no weight files to hash")
    memo = Path(cache_dir or DEFAULT_CACHE_DIR) / "model-hashes.json"
    key = str(Path(path).resolve())
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    try:
        known = read_json(memo, missing={})
    except FreezetuneError:  # a damaged memo is only a lost shortcut
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), dict) and known[key].get("files") == stamp:
        return known[key]["sha256"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        hash_file_into(digest, file)
    try:  # a read-only cache folder costs the next run a rehash, nothing more
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo, {**known, key: {"files": stamp, "sha256": digest.hexdigest()}})
    except OSError:
        pass
    return digest.hexdigest()


def meaning_hashes(path: Path) -> dict[str, str]:
    """sha256 of each config and tokenizer file the folder has."""
    return {
        name: file_sha256(Path(path) / name)
        for name in MEANING_FILES
        if (Path(path) / name).is_file()
    }


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    from freezetune import __version__

    return {
        "freezetune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def read_json(path: Path, missing=None):
    """A JSON file freezetune wrote; ``missing`` when absent, a one-line error naming it when damaged."""
    if not Path(path).is_file():
        return missing
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise FreezetuneError(f"{path}: damaged, not valid JSON{where}") from None


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (ValueError, UnicodeDecodeError):
        raise FreezetuneError(f"{path}: damaged, not JSON lines") from None


def not_a_run(run_dir: Path) -> str:
    """Why ``run_dir`` is no run; a mistyped path is said to be missing, not to lack a manifest."""
    if not Path(run_dir).exists():
        return f"{run_dir} does not exist"
    return f"{run_dir} is not a freezetune run: no manifest.json"


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FreezetuneError(not_a_run(run_dir))
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("base_model"), dict):
        raise FreezetuneError(
            f"{path}: damaged, it lacks the 'base_model' entry every run manifest has"
        )
    return manifest


def update_manifest(run_dir: Path, **fields) -> None:
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    write_json(Path(run_dir) / "manifest.json", manifest)


def check_base(manifest: dict, base_sha256: str, base_path: Path, run_dir: Path) -> None:
    """The model loaded must be the one the run was trained on: same weights, same config and tokenizer."""
    base = manifest["base_model"]
    if base.get("sha256") != base_sha256:
        raise FreezetuneError(
            f"{run_dir} was trained on base model {base.get('name')} with sha256 {str(base.get('sha256'))[:12]}…, "
            f"but the model loaded has sha256 {base_sha256[:12]}…; refusing to mix them"
        )
    now = meaning_hashes(base_path)
    # manifests before this check have none
    for name, expected in (base.get("files") or {}).items():
        if now.get(name) != expected:
            state = "is missing" if name not in now else "has changed"
            raise FreezetuneError(
                f"{run_dir}: the base model's {name} {state} since the run was trained "
                f"({Path(base_path) / name}); the same weights would mean a different model"
            )


def read_metrics(path: Path, warn=None) -> list[dict]:
    """The records of metrics.jsonl. A half-written last line (a killed run) is dropped with a
    warning through ``warn``, or without ``warn`` is an error; a damaged line elsewhere is an error."""
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no step")
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if any(rest.strip() for rest in lines[number:]):
                raise FreezetuneError(
                    f"{path} line {number}: damaged, not a metrics record"
                ) from None
            if warn is None:
                raise FreezetuneError(
                    f"{path} line {number}: half-written (the run was killed while logging); "
                    "`train --resume` drops it"
                ) from None
            warn(
                f"warning: {path} line {number} is half-written (the run was killed while logging); dropped"
            )
            break
        records.append(record)
    return records


def step_seconds(run_dir: Path) -> float:
    """The summed step times of a run's metrics.jsonl: 0 when it has none, a half-written last line (a
    killed run) left out. What a comparison counts as a run's training time."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        return 0.0
    return sum(r.get("step_time_s", 0.0) for r in read_metrics(metrics, warn=lambda _: None))


def findable(typed: str | None, recorded: str | None) -> str | None:
    """A model or data path a run was given: as recorded absolute at its start (``absolute``) where
    it is still there, else as typed. A run folder is exported or resumed from any working
    directory, where a relative `--model tiny` named nothing."""
    return recorded if recorded and Path(recorded).exists() else typed


def absolute(path: str | Path | None) -> str | None:
    """``path`` made absolute where it names a local file or folder; a name (an embedded model, a
    hub id) stays as it is."""
    return str(Path(path).absolute()) if path and Path(path).exists() else None
