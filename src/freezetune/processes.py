"""Which process this is: one place that asks accelerate, so every caller agrees.

accelerate's process state is created once per process and then shared. Created without
`cpu=True` on a machine without CUDA, it ignores a torchrun launch and every process believes
it is alone, so it must always be created the same way: here.
"""

from __future__ import annotations

import torch


def process_state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def check_launch(distributed_type: str | None = None) -> None:
    """Refuse FSDP and DeepSpeed launches: saving only the trained tensors and the prefix runner are
    not proven under sharding, and on CPU accelerate would quietly run plain DDP instead."""
    import os

    from freezetune.errors import FreezetuneError

    asked = {distributed_type} | {kind for kind in ("FSDP", "DEEPSPEED")
                                  if os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() in ("1", "true")}
    for kind in ("FSDP", "DEEPSPEED"):
        if kind in asked:
            raise FreezetuneError(f"{kind} launches are not supported yet; use plain multi-process DDP "
                                  "(accelerate launch with configs/ddp.yaml, or --num-processes N)")
