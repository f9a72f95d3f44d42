"""The trained tensors and resumable checkpoints of a run folder; nothing in them executes code.

    RUN/trainable.safetensors      the trained tensors only (peft-style: small and tied to the base by hash)
    RUN/checkpoints/step-000120/   trainable.safetensors    the trained tensors
                                   optimizer.safetensors    AdamW moments and steps, keyed by parameter name
                                   optimizer.json           param groups, the LR schedule's position
                                   rng-0.safetensors ...    each process's random state (rng.py)
                                   state.json               written last: step, and size + sha256 of every file

A checkpoint folder is built under a staging name, fsynced and renamed into place, so it is
either whole or absent; what damages it later (a bad disk, a truncated copy) shows up as a
checksum mismatch, and resume sets it aside and takes the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from freezetune.errors import FreezetuneError
from freezetune.models.loading import file_sha256
from freezetune.runs.durable import remove_leftovers, staged_dir, staged_file
from freezetune.runs.manifest import read_json
from freezetune.runs.rng import load_rng, rng_name, save_rng

KEEP_CHECKPOINTS = 2
SEP = "::"  # parameter name + SEP + state key, in optimizer.safetensors
CHECKSUM = "freezetune_sha256"  # safetensors header key of a file's tensors_sha256


# what a run writes into its folder: in a folder that is no run, one of them is the user's
RUN_FILES = (
    "metrics.jsonl",
    "eval.json",
    "eval-items.jsonl",
    "generations.jsonl",
    "trainable.safetensors",
)


def check_new_run_folder(path: Path) -> None:
    """A new run may go into ``path``: a folder that does not hold a run, nor a file a run would write."""
    if path.exists() and not path.is_dir():
        raise FreezetuneError(f"--out {path} is a file, not a folder")
    if (path / "manifest.json").exists():
        manifest = read_json(path / "manifest.json")
        # --resume would be refused too: nothing is left to continue
        if isinstance(manifest, dict) and manifest.get("status") == "finished":
            raise FreezetuneError(f"{path} holds a finished run; choose another --out")
        if checkpoint_dirs(path) or (path / "trainable.safetensors").exists():
            raise FreezetuneError(
                f"{path} already holds a run; pass --resume {path} to continue it, or choose another --out"
            )
        return
    # no manifest: these are not a run's, and the run would write over them
    theirs = [name for name in (*RUN_FILES, "checkpoints") if (path / name).exists()]
    if theirs:
        raise FreezetuneError(
            f"--out {path} holds {theirs[0]}, which the run would write over, and is no run folder "
            "(no manifest.json): choose another --out"
        )


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of names, dtypes, shapes and bits: what a file holds, however it is laid out on disk."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_trainable(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Written with its own checksum in the header, so a copy anywhere can be checked (read_tensors does)."""
    with staged_file(path) as staging:
        save_file(
            tensors,
            str(staging),
            metadata={"format": "pt", **(metadata or {}), CHECKSUM: tensors_sha256(tensors)},
        )


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as opened:
            return opened.metadata() or {}
    # safetensors raises its own error type for a truncated or garbled file
    except Exception as exc:
        raise FreezetuneError(
            f"{path}: damaged or not a safetensors file ({str(exc).splitlines()[0][:120]})"
        ) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a one-line error naming it; one written with a checksum must match it."""
    expected = read_metadata(path).get(CHECKSUM)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise FreezetuneError(
            f"{path}: damaged or not a safetensors file ({str(exc).splitlines()[0][:120]})"
        ) from None
    if expected is not None and tensors_sha256(tensors) != expected:
        raise FreezetuneError(
            f"{path} is damaged: its tensors do not match the checksum written with them"
        )
    return tensors


def _split_optimizer(optimizer: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {
        f"{name}{SEP}{key}": value.contiguous()
        for name, state in optimizer["state"].items()
        for key, value in state.items()
        if torch.is_tensor(value)
    }
    plain = {
        name: {k: v for k, v in state.items() if not torch.is_tensor(v)}
        for name, state in optimizer["state"].items()
    }
    return tensors, {"plain_state": plain, "param_groups": optimizer["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], described: dict) -> dict:
    state = {name: dict(values) for name, values in described["plain_state"].items()}
    for key, value in tensors.items():
        name, _, field = key.rpartition(SEP)
        state.setdefault(name, {})[field] = value
    groups = [
        {**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in described["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Published checkpoints, oldest first (staging and set-aside folders have other names)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith("step-")
        and p.name[5:].isascii()
        and p.name[5:].isdigit()
    ]
    return sorted(done, key=lambda p: int(p.name[5:]))


def stage_rng(run_dir: Path, step: int, rank: int) -> None:
    """Every process writes its own random state before the main process publishes the checkpoint."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    save_rng(root / f".{rng_name(rank)}.step-{step}.partial")


def save_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer: dict,
    lr_scheduler,
    state: dict,
    processes: int = 1,
) -> Path:
    """``tensors`` and ``optimizer``: from trainable_state and optimizer_state; the processes' random
    states: from stage_rng. Main process only."""
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:06d}"
    moments, described = _split_optimizer(optimizer)
    # staged_dir fsyncs every file before publishing; replace: a resumed run saving the step it resumed at
    with staged_dir(target, replace=True) as staging:
        save_file(tensors, str(staging / "trainable.safetensors"), metadata={"format": "pt"})
        save_file(moments, str(staging / "optimizer.safetensors"), metadata={"format": "pt"})
        (staging / "optimizer.json").write_text(
            json.dumps({**described, "scheduler": lr_scheduler.state_dict()}, indent=2)
        )
        for rank in range(processes):
            os.replace(root / f".{rng_name(rank)}.step-{step}.partial", staging / rng_name(rank))
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(staging.iterdir())
        }
        (staging / "state.json").write_text(
            json.dumps({"step": step, **state, "files": files}, indent=2)
        )
    for old in checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted, or None when every file is as state.json recorded it."""
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        files, step = state["files"], int(state["step"])
    except FileNotFoundError:
        old = (
            " (written by an older freezetune, whose pickled optimizer.pt is no longer loaded)"
            if (checkpoint / "optimizer.pt").exists()
            else ""
        )
        return f"state.json is missing{old}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "state.json is damaged"
    if f"step-{step:06d}" != checkpoint.name:
        return f"state.json says step {step}"
    for name in ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", rng_name(0)):
        if name not in files:
            return f"state.json does not list {name}"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} were written"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def intact_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path:
    """The newest checkpoint whose files match their checksums. Damaged newer ones are renamed
    to damaged-step-N (never deleted) with a warning; none intact is an error."""
    remove_leftovers(Path(run_dir) / "checkpoints")
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        reason = damage(checkpoint)
        if reason is None:
            return checkpoint
        aside = checkpoint.with_name(f"damaged-{checkpoint.name}")
        while aside.exists():
            aside = aside.with_name(aside.name + "-again")
        os.replace(checkpoint, aside)
        warn(f"warning: checkpoint {checkpoint} is damaged ({reason}); set aside as {aside.name}")
    raise FreezetuneError(f"{run_dir}: no intact checkpoint to resume from")


def load_checkpoint(
    checkpoint: Path, lr_scheduler, rank: int
) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """The schedule and this process's random state back. Returns the state, the trained tensors and
    the optimizer state, which the backend puts in place (it knows where its weights and state live)."""
    state = json.loads((checkpoint / "state.json").read_text())
    tensors = read_tensors(checkpoint / "trainable.safetensors")
    described = json.loads((checkpoint / "optimizer.json").read_text())
    optimizer = _join_optimizer(read_tensors(checkpoint / "optimizer.safetensors"), described)
    lr_scheduler.load_state_dict(described["scheduler"])
    # a run resumed with more processes than it saved: the new ones take the main process's state
    own = checkpoint / rng_name(rank)
    load_rng(own if own.is_file() else checkpoint / rng_name(0))
    return state, tensors, optimizer
