"""Whole tensors by parameter name, to and from parameters laid out as a backend holds them.

A checkpoint stores every trained tensor and its optimizer state whole, keyed by name, so it
resumes under any process count, replicated or sharded; these read them out of (and cut them
back into) the layout of the running model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from freezetune.distributed.sharding import full, like
from freezetune.errors import FreezetuneError


def trainable_state(
    model: torch.nn.Module, names: list[str], read=lambda p: full(p.detach())
) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU; ``read`` gives a parameter's whole value (backends.Replicated.value).
    Under sharding a collective: every process calls it, the main one writes."""
    params = dict(model.named_parameters())
    return {name: read(params[name]).to("cpu").contiguous().clone() for name in names}


def apply_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``tensors`` (read from ``path``) into the model's parameters, each laid out as its parameter is."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise FreezetuneError(
            f"{path}: tensor {unknown[0]} is not a parameter of {type(model).__name__}"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise FreezetuneError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model has {tuple(params[name].shape)}"
                )
            params[name].copy_(like(tensor, params[name]))


def optimizer_state(optimizer, model: torch.nn.Module) -> dict:
    """The optimizer's state keyed by parameter name, with whole tensors: a checkpoint then resumes
    under any process count, sharded or not. Under FSDP a collective, like trainable_state."""
    names = {id(p): n for n, p in model.named_parameters()}
    saved = optimizer.state_dict()
    index = {}
    for group, live in zip(saved["param_groups"], optimizer.param_groups):
        index.update(zip(group["params"], (names[id(p)] for p in live["params"])))
    return {
        "state": {
            index[i]: {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in saved["state"].items()
        },
        "param_groups": [
            {**g, "params": [index[i] for i in g["params"]]} for g in saved["param_groups"]
        ],
    }


def check_same_groups(saved: dict, live: list[list[str]], where: Path) -> None:
    """The saved optimizer state must cover the tensors this run trains, group by group."""
    if [g["params"] for g in saved["param_groups"]] != live:
        raise FreezetuneError(
            f"{where}: the optimizer state covers other tensors than this run trains "
            "(a checkpoint of another plan, or of an older freezetune)"
        )


def load_optimizer_state(optimizer, model: torch.nn.Module, saved: dict, where: Path) -> None:
    """Inverse of optimizer_state: each whole tensor is cut to the layout of the parameter it belongs to."""
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    current = optimizer.state_dict()
    check_same_groups(
        saved, [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups], where
    )
    state = {}
    for group, old in zip(current["param_groups"], saved["param_groups"]):
        for index, name in zip(group["params"], old["params"]):
            if name in saved["state"]:  # 0-dim values (AdamW's step) stay as they are
                state[index] = {
                    k: like(v, params[name]) if torch.is_tensor(v) and v.dim() else v
                    for k, v in saved["state"][name].items()
                }
    groups = [
        {**old, "params": group["params"]}
        for group, old in zip(current["param_groups"], saved["param_groups"])
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
