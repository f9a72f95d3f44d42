"""Weights in the training precision: frozen tensors in 16 bits, trained ones in fp32.

Under ``--precision bf16`` (the default on a GPU) every matmul runs in bf16 under autocast, so
a frozen weight never needs more than its 16 bits: storing it in fp32 would double the memory
of the part of the model a freeze plan exists to make cheap. A trained tensor keeps an fp32
copy, the one AdamW updates: bf16 has 8 bits of mantissa, so an update smaller than 1/256 of
a weight would vanish if the weight itself were stored in bf16. Per trained parameter that is
4 bytes of weight, 4 of gradient and 8 of moments; per frozen one, 2.

FSDP2 gathers a block's tensors in one buffer of one dtype, and DeepSpeed keeps its own bf16
copies and fp32 masters, so under sharding the weights stay as the backend wants them.
"""

from __future__ import annotations

import torch

MIXED = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(precision: str) -> str:
    """What ``--precision`` means on this machine: auto is bf16 on a GPU, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def store_in_training_precision(
    model: torch.nn.Module, precision: str, sharded: bool
) -> dict[str, str]:
    """Cast frozen tensors to the 16-bit type of ``precision`` and trained ones to fp32, in place.
    Returns the dtypes now stored, for the manifest."""
    mixed = MIXED.get(training_precision(precision))
    with torch.no_grad():
        for param in model.parameters():
            target = (
                mixed
                if (mixed is not None and not param.requires_grad and not sharded)
                else torch.float32
            )
            if param.dtype != target and param.is_floating_point():
                param.data = param.data.to(target)
    return stored_dtypes(model)


def stored_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """The dtypes of the frozen and of the trained tensors ("none" where there are none)."""

    def kinds(trained: bool) -> str:
        found = sorted(
            {
                str(p.dtype).removeprefix("torch.")
                for p in model.parameters()
                if p.requires_grad == trained
            }
        )
        return "/".join(found) or "none"

    return {"frozen": kinds(False), "trainable": kinds(True)}
