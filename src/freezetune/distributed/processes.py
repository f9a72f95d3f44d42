"""Which process this is, and what kind of multi-process launch started it.

accelerate's process state is created once per process and then shared. Created without
`cpu=True` on a machine without CUDA, it ignores a torchrun launch and every process believes
it is alone, so it must always be created the same way: here.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import MutableMapping

import torch

from freezetune.distributed.sharding import FsdpSettings, ZeroSettings
from freezetune.errors import FreezetuneError


def process_state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def die_with_parent(signal_number: int) -> None:
    """This process gets ``signal_number`` when its parent dies (Linux; elsewhere nothing): a worker started in a
    session of its own would otherwise outlive a killed launcher, training and writing unseen."""
    try:  # ctypes is imported at the top: this runs between fork and exec, where an import can deadlock
        ctypes.CDLL(None, use_errno=True).prctl(1, signal_number)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _flag(env: MutableMapping[str, str], name: str, default: str = "false") -> bool:
    return env.get(name, default).strip().lower() in ("1", "true", "yes")


def launch_sharding(
    env: MutableMapping[str, str], fsdp_flag: bool = False, zero_stage: int = 0
) -> FsdpSettings | ZeroSettings | None:
    """The sharding an `accelerate launch` config (or --fsdp / --zero-stage) asks for; None for DDP.

    An accelerate FSDP or DeepSpeed launch is taken over: its flag is removed from ``env`` so that
    accelerate runs its plain multi-process path and freezetune wraps the model itself
    (backends.py), the same way on CPU and GPU. Settings it cannot honour are refused, not ignored."""
    launched = (
        "DeepSpeed"
        if _flag(env, "ACCELERATE_USE_DEEPSPEED")
        else "FSDP"
        if _flag(env, "ACCELERATE_USE_FSDP")
        else None
    )
    asked = (
        "--fsdp"
        if fsdp_flag and launched == "DeepSpeed"
        else "--zero-stage"
        if zero_stage and launched == "FSDP"
        else None
    )
    if asked:
        raise FreezetuneError(
            f"{asked} conflicts with the {launched} launch; give one way of sharding"
        )
    if launched == "DeepSpeed":
        return _deepspeed_launch(env)
    if launched is None:
        return FsdpSettings() if fsdp_flag else ZeroSettings(zero_stage) if zero_stage else None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise FreezetuneError(
            f"FSDP config: fsdp_version {version}; freezetune shards with FSDP2, where frozen tensors "
            "hold no gradient memory: set fsdp_version: 2 (see configs/fsdp.yaml)"
        )
    if _flag(env, "FSDP_OFFLOAD_PARAMS"):
        raise FreezetuneError(
            "FSDP config: fsdp_offload_params is not supported; shards stay on the device"
        )
    if _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"):
        raise FreezetuneError(
            "FSDP config: fsdp_activation_checkpointing would recompute every block; use "
            "--gradient-checkpointing, which recomputes the trained blocks only"
        )
    policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy != "TRANSFORMER_BASED_WRAP":
        raise FreezetuneError(
            f"FSDP config: fsdp_auto_wrap_policy {policy}; freezetune makes one unit per transformer "
            "block: use TRANSFORMER_BASED_WRAP"
        )
    classes = tuple(
        c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()
    )
    env.pop("ACCELERATE_USE_FSDP")
    return FsdpSettings(
        reshard_after_forward=_flag(env, "FSDP_RESHARD_AFTER_FORWARD", "true"), wrap_classes=classes
    )


def _deepspeed_launch(env: MutableMapping[str, str]) -> ZeroSettings:
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "None") not in ("None", ""):
        raise FreezetuneError(
            "DeepSpeed config: freezetune writes the DeepSpeed config from its own options; "
            "give zero_stage in the accelerate config instead of a deepspeed_config_file"
        )
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if stage not in ("1", "2", "3"):
        raise FreezetuneError(
            f"DeepSpeed config: zero_stage {stage}; freezetune runs ZeRO stage 1, 2 or 3 "
            "(stage 0 is plain DDP: configs/ddp.yaml)"
        )
    for what in ("OPTIMIZER", "PARAM"):
        device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{what}_DEVICE", "none")
        if device != "none":
            raise FreezetuneError(
                f"DeepSpeed config: offload_{what.lower()}_device {device} is not supported; "
                "the state stays on the device"
            )
    if env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") != "1":
        raise FreezetuneError(
            "DeepSpeed config: set gradient accumulation with --grad-accum, not in the accelerate config"
        )
    if env.get("ACCELERATE_GRADIENT_CLIPPING", "none") not in ("none", ""):
        raise FreezetuneError(
            "DeepSpeed config: set gradient clipping with --max-grad-norm, not in the accelerate config"
        )
    env.pop("ACCELERATE_USE_DEEPSPEED")
    return ZeroSettings(int(stage))


def check_same_plan(accelerator, names: list[str]) -> None:
    """Every process must train the same tensors, or DDP averages gradients of different things."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    mine = hashlib.sha256("\n".join(names).encode()).hexdigest()
    everyone = gather_object([mine])
    if len(set(everyone)) != 1:
        raise FreezetuneError(
            f"the processes resolved different plans (trainable-set hashes {sorted(set(everyone))}); "
            "give every process the same model and plan"
        )


def stop_agreed(accelerator, wanted: bool) -> bool:
    """Whether any process wants to stop: a signal may reach one process first, and all of them must
    stop at the same step."""
    if accelerator.num_processes == 1:
        return wanted
    flag = torch.tensor([float(wanted)], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item())
