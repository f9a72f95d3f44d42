"""The accelerator a run trains under (device, mixed precision, DDP settings), and its seeding.

The loop, the advisor's gradient probe and the step-time benchmark all build theirs here, so a
probe measures what training will do.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from freezetune.errors import FreezetuneError


def make_accelerator(
    precision: str, log_with: str | None, run_dir: Path, changing_set: bool = False
) -> Accelerator:
    """``changing_set``: a schedule moves the trainable set, so DDP (wrapped once, over the whole plan) must
    find the tensors each step leaves out rather than wait for their gradients."""
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    mixed = {"auto": "bf16" if cuda else "no", "fp32": "no", "bf16": "bf16", "fp16": "fp16"}[
        precision
    ]
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if changing_set else []
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=not cuda,
        log_with=log_with,
        project_dir=str(run_dir),
        kwargs_handlers=handlers,
    )
    # the CLI's launch_sharding takes these over
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise FreezetuneError(
            f"accelerate is set up for {accelerator.distributed_type.value}; freezetune shards the model "
            "itself: pass FsdpSettings to open_session (distributed.processes.launch_sharding reads a launch)"
        )
    return accelerator


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
