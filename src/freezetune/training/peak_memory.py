"""The measured peak memory of a run: the CUDA allocator's, or the process's peak RSS on a CPU."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark, so each run (a comparison runs several) reports its own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the process-wide peak is all there is; peak_memory_bytes says the same


def current_rss_bytes() -> int | None:
    """This process's resident memory now (Linux), e.g. the interpreter and libraries before a model loads."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak. CPU: the process's peak RSS since reset_peak_memory (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
