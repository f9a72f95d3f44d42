"""Which process this is, and what kind of multi-process launch started it.

accelerate's process state is created once per process and then shared. Created without
`cpu=True` on a machine without CUDA, it ignores a torchrun launch and every process believes
it is alone, so it must always be created the same way: here.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch

from freezetune.errors import FreezetuneError
from freezetune.sharding import FsdpSettings


def process_state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _flag(env: MutableMapping[str, str], name: str, default: str = "false") -> bool:
    return env.get(name, default).strip().lower() in ("1", "true", "yes")


def launch_sharding(env: MutableMapping[str, str], fsdp_flag: bool = False) -> FsdpSettings | None:
    """The FSDP settings an `accelerate launch` config (or --fsdp) asks for; None for plain DDP.

    An accelerate FSDP launch is taken over: its flag is removed from ``env`` so that accelerate
    runs its plain multi-process path and freezetune shards the model itself (sharding.py), the
    same way on CPU and GPU. Settings freezetune cannot honour are refused, not ignored."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        raise FreezetuneError("DeepSpeed launches are not supported; shard with FSDP instead "
                              "(accelerate launch --config_file configs/fsdp.yaml, or --fsdp)")
    if not _flag(env, "ACCELERATE_USE_FSDP"):
        return FsdpSettings() if fsdp_flag else None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise FreezetuneError(f"FSDP config: fsdp_version {version}; freezetune shards with FSDP2, where frozen tensors "
                              "hold no gradient memory: set fsdp_version: 2 (see configs/fsdp.yaml)")
    if _flag(env, "FSDP_OFFLOAD_PARAMS"):
        raise FreezetuneError("FSDP config: fsdp_offload_params is not supported; shards stay on the device")
    if _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"):
        raise FreezetuneError("FSDP config: fsdp_activation_checkpointing would recompute every block; use "
                              "--gradient-checkpointing, which recomputes the trained blocks only")
    policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy != "TRANSFORMER_BASED_WRAP":
        raise FreezetuneError(f"FSDP config: fsdp_auto_wrap_policy {policy}; freezetune makes one unit per transformer "
                              "block: use TRANSFORMER_BASED_WRAP")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    env.pop("ACCELERATE_USE_FSDP")
    return FsdpSettings(reshard_after_forward=_flag(env, "FSDP_RESHARD_AFTER_FORWARD", "true"), wrap_classes=classes)
