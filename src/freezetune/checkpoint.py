"""The run directory: a manifest, only the trained tensors, metrics, and resumable checkpoints.

    RUN/manifest.json              base model (name, path, sha256), plan, trainable names, config, versions
    RUN/trainable.safetensors      the trained tensors only (peft-style: small and tied to the base by hash)
    RUN/metrics.jsonl              one line per logged step
    RUN/eval.json                  final evaluation
    RUN/checkpoints/step-000120/   trainable.safetensors, optimizer.pt, state.json

Every write that matters goes to a staging name first and is renamed into place, so an
interrupted save leaves the previous good file or checkpoint untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from freezetune.errors import FreezetuneError
from freezetune.models import hash_file_into
from freezetune.sharding import full, like

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
KEEP_CHECKPOINTS = 2


def model_hash(path: Path) -> str:
    """sha256 over the weight files of an HF folder (names and bytes, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise FreezetuneError(f"{path} holds no weight files to hash")
    for file in files:
        digest.update(file.name.encode())
        hash_file_into(digest, file)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, never half of it."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")  # processes of one run never share it
    staging.write_text(text)
    os.replace(staging, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_dir(target: Path):
    """Yield an empty folder beside ``target``; it becomes ``target`` only if the block finishes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    from freezetune import __version__

    return {"freezetune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def trainable_state(model: torch.nn.Module, names: list[str], read=lambda p: full(p.detach())) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU; ``read`` gives a parameter's whole value (backends.Replicated.value).
    Under sharding a collective: every process calls it, the main one writes."""
    params = dict(model.named_parameters())
    return {name: read(params[name]).to("cpu").contiguous().clone() for name in names}


def save_trainable(tensors: dict[str, torch.Tensor], path: Path) -> None:
    staging = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(staging), metadata={"format": "pt"})
    os.replace(staging, path)


def load_trainable(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Copy saved tensors into the model's parameters; returns them by name."""
    tensors = load_file(str(path))
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


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FreezetuneError(f"{run_dir} is not a freezetune run: no manifest.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FreezetuneError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def check_base(manifest: dict, base_sha256: str, run_dir: Path) -> None:
    expected = manifest["base_model"]["sha256"]
    if expected != base_sha256:
        raise FreezetuneError(
            f"{run_dir} was trained on base model {manifest['base_model']['name']} with sha256 {expected[:12]}…, "
            f"but the model loaded has sha256 {base_sha256[:12]}…; refusing to mix them"
        )


# --- resumable checkpoints ------------------------------------------------------------------

def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging folders start with '.' and are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


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


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer: dict, scheduler,
                    state: dict) -> Path:
    """``tensors`` and ``optimizer``: from trainable_state and optimizer_state."""
    target = Path(run_dir) / "checkpoints" / f"step-{step:06d}"
    with staged_dir(target) as staging:
        save_file(tensors, str(staging / "trainable.safetensors"))
        torch.save({"optimizer": optimizer, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for old in checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(checkpoint: Path, scheduler) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """The schedule and the RNG back. Returns the state, the trained tensors and the optimizer state,
    which the backend puts in place (it knows where its weights and optimizer state live)."""
    tensors = load_file(str(checkpoint / "trainable.safetensors"))
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return json.loads((checkpoint / "state.json").read_text()), tensors, saved["optimizer"]


def rng_state() -> dict:
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
