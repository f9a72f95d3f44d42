"""Sharding settings (FSDP, DeepSpeed ZeRO), and FSDP itself: freezetune shards the model with
torch's FSDP2 (`fully_shard`). ZeRO runs in backends.Zero.

Why FSDP2 and not FSDP1: FSDP1 flattens each unit into one FlatParameter, which must be all
frozen or all trainable (or, with use_orig_params, still allocates gradient memory for the
frozen part). FSDP2 shards every parameter on its own as a DTensor, so a unit may mix frozen
and trainable tensors, frozen ones never get a gradient, and the optimizer is built over the
trainable shards only.

Why not accelerate's FSDP: on CPU accelerate ignores an FSDP launch and quietly runs DDP, so
the code path a GPU would take could never be tested. freezetune reads the launch's FSDP
settings (processes.py) and wraps the model here, the same way on every device; accelerate
keeps doing what it does well (process state, autocast, reductions).

One unit per block (the anatomy's block list) plus the root for what is outside the blocks.
The frozen prefix is sharded too: it runs under no_grad, so it costs an all-gather per step
and no gradient. A prefix-cache replay still enters every block, so every process issues
the same collectives whether its examples were cached or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from freezetune.errors import FreezetuneError
from freezetune.plans.resolution import ResolvedPlan


@dataclass(frozen=True)
class FsdpSettings:
    # False: keep gathered parameters from forward to backward (faster, more memory)
    reshard_after_forward: bool = True
    # the launch config's transformer_layer_cls_to_wrap; must name the blocks
    wrap_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ZeroSettings:
    """DeepSpeed ZeRO (backends.Zero). Stage 1 partitions the optimizer state, stage 2 also the gradients,
    stage 3 also the weights."""

    stage: int = 2


def check_sharding(
    settings: FsdpSettings | ZeroSettings, model: nn.Module, resolved: ResolvedPlan, precision: str
) -> None:
    """Refuse what the sharding cannot do with this model and plan, before the run folder exists."""
    if precision == "fp16":
        kind = "FSDP" if isinstance(settings, FsdpSettings) else "DeepSpeed"
        raise FreezetuneError(
            f"{kind} with fp16 would need a loss scaler across the shards, which freezetune does "
            "not run; use --precision bf16 (or fp32)"
        )
    if isinstance(settings, ZeroSettings):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise FreezetuneError("ZeRO needs the deepspeed package: pip install deepspeed")
        return
    if not resolved.anatomy.blocks_path:
        raise FreezetuneError("FSDP: the model has no block list to make one unit per block from")
    block = type(model.get_submodule(resolved.anatomy.blocks_path)[0]).__name__
    if settings.wrap_classes and block not in settings.wrap_classes:
        raise FreezetuneError(
            f"FSDP config: fsdp_transformer_layer_cls_to_wrap {','.join(settings.wrap_classes)} does not name this "
            f"model's block class {block}; freezetune makes one unit per {block} (leave the field out, or name {block})"
        )


def shard_model(
    model: nn.Module,
    resolved: ResolvedPlan,
    settings: FsdpSettings,
    device: torch.device,
    bf16: bool,
) -> nn.Module:
    """Shard ``model`` in place, one FSDP2 unit per block, after the plan has frozen its tensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise FreezetuneError(
            "FSDP needs a distributed launch: --num-processes N, torchrun, or accelerate launch"
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # bf16: gather and compute in bf16, but reduce gradients in fp32 so small updates are not rounded away
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    options = {
        "mesh": mesh,
        "reshard_after_forward": settings.reshard_after_forward,
        "mp_policy": policy,
    }
    for block in model.get_submodule(resolved.anatomy.blocks_path):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


# --- tensors that may be sharded --------------------------------------------------------------


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor. For a shard this is a collective: every process must call it, in the same order."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part: its shard, or the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``param`` is: cut to this process's shard (no communication; every
    process read the same file) or simply moved to its device."""
    if not is_sharded(param):
        return whole.to(param.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None
    )
