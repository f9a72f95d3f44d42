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

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from freezetune.durable import fsync_path, publish, remove_leftovers, staged_dir
from freezetune.errors import FreezetuneError
from freezetune.models import file_sha256
from freezetune.rng import load_rng, rng_name, save_rng
from freezetune.sharding import full, like

KEEP_CHECKPOINTS = 2
SEP = "::"  # parameter name + SEP + state key, in optimizer.safetensors


def trainable_state(model: torch.nn.Module, names: list[str], read=lambda p: full(p.detach())) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU; ``read`` gives a parameter's whole value (backends.Replicated.value).
    Under sharding a collective: every process calls it, the main one writes."""
    params = dict(model.named_parameters())
    return {name: read(params[name]).to("cpu").contiguous().clone() for name in names}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    fsync_path(path)


def save_trainable(tensors: dict[str, torch.Tensor], path: Path) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        _save_tensors(tensors, staging)
        publish(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a one-line error naming it."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for a truncated or garbled file
        raise FreezetuneError(f"{path}: damaged or not a safetensors file ({str(exc).splitlines()[0][:120]})") from None


def load_trainable(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Copy saved tensors into the model's parameters; returns them by name."""
    tensors = read_tensors(path)
    apply_trainable(model, tensors, path)
    return tensors


def apply_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``tensors`` (read from ``path``) into the model's parameters, each laid out as its parameter is."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise FreezetuneError(f"{path}: tensor {unknown[0]} is not a parameter of {type(model).__name__}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise FreezetuneError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(params[name].shape)}")
            params[name].copy_(like(tensor, params[name]))


# --- optimizer state, keyed by parameter name -------------------------------------------------

def optimizer_state(optimizer, model: torch.nn.Module) -> dict:
    """The optimizer's state keyed by parameter name, with whole tensors: a checkpoint then resumes
    under any process count, sharded or not. Under FSDP a collective, like trainable_state."""
    names = {id(p): n for n, p in model.named_parameters()}
    saved = optimizer.state_dict()
    index = {}
    for group, live in zip(saved["param_groups"], optimizer.param_groups):
        index.update(zip(group["params"], (names[id(p)] for p in live["params"])))
    return {
        "state": {index[i]: {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                  for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [index[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


def check_same_groups(saved: dict, live: list[list[str]], where: Path) -> None:
    """The saved optimizer state must cover the tensors this run trains, group by group."""
    if [g["params"] for g in saved["param_groups"]] != live:
        raise FreezetuneError(f"{where}: the optimizer state covers other tensors than this run trains "
                              "(a checkpoint of another plan, or of an older freezetune)")


def load_optimizer_state(optimizer, model: torch.nn.Module, saved: dict, where: Path) -> None:
    """Inverse of optimizer_state: each whole tensor is cut to the layout of the parameter it belongs to."""
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    current = optimizer.state_dict()
    check_same_groups(saved, [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups], where)
    state = {}
    for group, old in zip(current["param_groups"], saved["param_groups"]):
        for index, name in zip(group["params"], old["params"]):
            if name in saved["state"]:  # 0-dim values (AdamW's step) stay as they are
                state[index] = {k: like(v, params[name]) if torch.is_tensor(v) and v.dim() else v
                                for k, v in saved["state"][name].items()}
    groups = [{**old, "params": group["params"]} for group, old in zip(current["param_groups"], saved["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _split_optimizer(optimizer: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"{name}{SEP}{key}": value.contiguous() for name, state in optimizer["state"].items()
               for key, value in state.items() if torch.is_tensor(value)}
    plain = {name: {k: v for k, v in state.items() if not torch.is_tensor(v)} for name, state in optimizer["state"].items()}
    return tensors, {"plain_state": plain, "param_groups": optimizer["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], described: dict) -> dict:
    state = {name: dict(values) for name, values in described["plain_state"].items()}
    for key, value in tensors.items():
        name, _, field = key.rpartition(SEP)
        state.setdefault(name, {})[field] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in described["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- checkpoints ------------------------------------------------------------------------------

def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Published checkpoints, oldest first (staging and set-aside folders have other names)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def stage_rng(run_dir: Path, step: int, rank: int) -> None:
    """Every process writes its own random state before the main process publishes the checkpoint."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    save_rng(root / f".{rng_name(rank)}.step-{step}.partial")


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer: dict, scheduler,
                    state: dict, processes: int = 1) -> Path:
    """``tensors`` and ``optimizer``: from trainable_state and optimizer_state; the processes' random
    states: from stage_rng. Main process only."""
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:06d}"
    moments, described = _split_optimizer(optimizer)
    with staged_dir(target, replace=True) as staging:  # replace: a resumed run saving the step it resumed at
        _save_tensors(tensors, staging / "trainable.safetensors")
        _save_tensors(moments, staging / "optimizer.safetensors")
        (staging / "optimizer.json").write_text(json.dumps({**described, "scheduler": scheduler.state_dict()}, indent=2))
        for rank in range(processes):
            os.replace(root / f".{rng_name(rank)}.step-{step}.partial", staging / rng_name(rank))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(staging.iterdir())}
        (staging / "state.json").write_text(json.dumps({"step": step, **state, "files": files}, indent=2))
    for old in checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted, or None when every file is as state.json recorded it."""
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        files, step = state["files"], int(state["step"])
    except FileNotFoundError:
        old = " (written by an older freezetune, whose pickled optimizer.pt is no longer loaded)" \
            if (checkpoint / "optimizer.pt").exists() else ""
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


def load_checkpoint(checkpoint: Path, scheduler, rank: int) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """The schedule and this process's random state back. Returns the state, the trained tensors and
    the optimizer state, which the backend puts in place (it knows where its weights and state live)."""
    state = json.loads((checkpoint / "state.json").read_text())
    tensors = read_tensors(checkpoint / "trainable.safetensors")
    described = json.loads((checkpoint / "optimizer.json").read_text())
    optimizer = _join_optimizer(read_tensors(checkpoint / "optimizer.safetensors"), described)
    scheduler.load_state_dict(described["scheduler"])
    # a run resumed with more processes than it saved: the new ones take the main process's state
    own = checkpoint / rng_name(rank)
    load_rng(own if own.is_file() else checkpoint / rng_name(0))
    return state, tensors, optimizer
