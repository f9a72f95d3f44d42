"""One process's random state (Python, NumPy, torch, CUDA) as a safetensors file: loading it runs no code.

Each process saves its own, so that after a resume every process draws the same dropout
masks and samples it would have drawn without the interruption.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def rng_name(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def save_rng(path: Path) -> None:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
    }
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    plain = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
    }
    # fsynced with its checkpoint folder
    save_file(tensors, str(path), metadata={"plain": json.dumps(plain)})


def load_rng(path: Path) -> None:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        plain = json.loads(handle.metadata()["plain"])
    version, mt, gauss = plain["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state(
        (kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len([k for k in tensors if k.startswith("cuda.")]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
