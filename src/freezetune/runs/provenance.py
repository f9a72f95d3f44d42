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

RESULT_FOLDERS = ("bench/results", "docs/results")


def _git(where: Path, *args: str) -> str | None:
    """A git answer about the checkout at ``where``; None outside one (an installed wheel) or without git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10
        )
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


def provenance(code: Path | None = None) -> dict:
    """commit (and whether the checkout had uncommitted changes to tracked files other than results files),
    versions, CPU, GPU, date. ``code``: a folder of the checkout that ran (default: freezetune's own)."""
    code = code or Path(__file__).parent
    commit = _git(code, "rev-parse", "HEAD")
    # results files are what measurements write, not code: a benchmark run after another is still clean
    changes = (
        _git(
            code,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ":(top)",
            *(f":(top,exclude){folder}" for folder in RESULT_FOLDERS),
        )
        if commit
        else None
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    installed = {name: _installed(name) for name in ("peft", "safetensors", "numpy", "trl")}
    return {
        "commit": commit,
        "uncommitted_changes": bool(changes) if commit else None,
        "versions": {**versions(), **installed},
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
