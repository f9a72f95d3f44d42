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
