"""AdamW over the trainable tensors only, its learning-rate schedule, and retargeting it.

Frozen tensors never enter the optimizer: no moments, no weight decay, and with
``zero_grad(set_to_none=True)`` no momentum can move them. Retargeting points the groups
at a new trainable set at a step boundary: a tensor that stops training loses its moments
(carrying them over is the leak LISA implementations are known for), one that starts
training begins with fresh ones. With a layer-wise decay G, block i trains at
``lr * G ** (top - i)``; the embeddings follow block 0 and the final norm and head the top block.
"""

from __future__ import annotations

import math

import torch

from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import find_anatomy


def layer_scales(model: torch.nn.Module, layer_decay: float) -> dict[int, float]:
    """id(parameter) -> its learning-rate multiple under layer-wise decay (empty when there is none)."""
    if layer_decay == 1.0:
        return {}
    anatomy = find_anatomy(model)
    top = max(anatomy.num_layers - 1, 0)
    params = dict(model.named_parameters())
    neighbour = {"embeddings": 0, "norm": top, "head": top}
    return {
        id(params[e.name]): layer_decay
        ** (top - (e.layer if e.part == "block" else neighbour[e.part]))
        for e in anatomy.entries
        if e.name == e.tensor and e.name in params
    }


def check_layer_decay(model: torch.nn.Module, layer_decay: float) -> None:
    """A decay over tensors that all sit at one depth gives every one the same rate: it changes nothing."""
    scales = layer_scales(model, layer_decay)
    rates = {scales.get(id(p), 1.0) for p in model.parameters() if p.requires_grad}
    if scales and len(rates) == 1:
        raise FreezetuneError(
            f"--layer-lr-decay {layer_decay:g} has nothing to vary: every tensor the plan trains sits "
            "at one depth (one block, or the top block with the final norm and head), so all take the "
            "same rate; give a plan over several blocks, or no --layer-lr-decay"
        )


def _groups(model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decayed (2-d and up) and not decayed tensors; under layer-wise decay one pair per rate multiple,
    named so that a checkpoint's groups line up with a rebuilt optimizer's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    scales = layer_scales(model, layer_decay)
    groups = []
    for scale in sorted({scales.get(id(p), 1.0) for p in trainable}, reverse=True):
        members = [p for p in trainable if scales.get(id(p), 1.0) == scale]
        suffix = "" if not scales else f"@{scale:.6g}"
        groups += [
            {
                "name": f"decay{suffix}",
                "params": [p for p in members if p.dim() >= 2],
                "weight_decay": weight_decay,
                "lr_scale": scale,
            },
            {
                "name": f"no_decay{suffix}",
                "params": [p for p in members if p.dim() < 2],
                "weight_decay": 0.0,
                "lr_scale": scale,
            },
        ]
    return groups


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> torch.optim.AdamW:
    """Norms and biases (1-d tensors) are not decayed; an empty group is left out."""
    groups = [
        {**g, "lr": lr * g["lr_scale"]}
        for g in _groups(model, weight_decay, layer_decay)
        if g["params"]
    ]
    return torch.optim.AdamW(groups, lr=lr)


def build_lr_scheduler(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to 0 at ``total``; every group keeps its own peak rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0, so the first step already moves the weights
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def drop_resting_moments(optimizer: torch.optim.Optimizer) -> None:
    """Forget the moments of every tensor in the groups that no longer trains: a block that comes back
    starts afresh (carrying them over is the leak LISA implementations are known for). Read from the state
    itself, so it holds after the groups were pointed at the new set. ``optimizer`` may be accelerate's wrapper."""
    state = getattr(optimizer, "optimizer", optimizer).state
    for param in [p for p in state if not p.requires_grad]:
        del state[param]


def retarget_optimizer(
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    model: torch.nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
) -> None:
    """Point the groups at the tensors whose requires_grad is set now, in the model's order."""
    # the run's peak rate, recovered from any group: each group's base rate is it times the group's multiple
    peak = lr_scheduler.base_lrs[0] / optimizer.param_groups[0].get("lr_scale", 1.0)
    fresh_groups = _groups(model, weight_decay, layer_decay)
    named = {g["name"] for g in fresh_groups}
    for group in optimizer.param_groups:
        if group.get("name") not in named:
            # a rate no tensor trains at now (a resting block's): kept, empty, for the next time
            group["params"] = []
    for fresh in fresh_groups:
        group = next((g for g in optimizer.param_groups if g.get("name") == fresh["name"]), None)
        if group is not None:
            group["params"] = fresh["params"]
        # a kind of tensor that did not train before: a group, and the schedule's share of it
        elif fresh["params"]:
            base = peak * fresh["lr_scale"]
            factor = lr_scheduler.lr_lambdas[0](lr_scheduler.last_epoch)
            optimizer.add_param_group({**fresh, "lr": base * factor, "initial_lr": base})
            lr_scheduler.base_lrs.append(base)
            lr_scheduler.lr_lambdas.append(lr_scheduler.lr_lambdas[0])
