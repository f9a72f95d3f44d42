"""Where a measured number came from: the code's commit, the library versions, the CPU and the date.

Every results file a document quotes (a comparison's results.json, bench/results/*.json) carries
this, so a number in the README can be traced to what produced it and regenerated.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

from freezetune.runs.manifest import versions


def _git(*args: str) -> str | None:
    """A git answer about the checkout freezetune runs from; None for an installed wheel or no git."""
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """commit (and whether the checkout had uncommitted changes to tracked files), versions, CPU, GPU, date."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    installed = {name: _installed(name) for name in ("peft", "safetensors", "numpy", "trl")}
    return {"commit": commit, "uncommitted_changes": bool(changes) if commit else None, "versions": {**versions(), **installed},
            "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
