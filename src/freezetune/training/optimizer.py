"""AdamW over the trainable tensors only, its learning-rate schedule, and retargeting it.

Frozen tensors never enter the optimizer: no moments, no weight decay, and with
``zero_grad(set_to_none=True)`` no momentum can move them. Retargeting points the groups
at a new trainable set at a step boundary: a tensor that stops training loses its moments
(carrying them over is the leak LISA implementations are known for), one that starts
training begins with fresh ones.
"""

from __future__ import annotations

import math

import torch


def _groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "decay", "params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
            {"name": "no_decay", "params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Norms and biases (1-d tensors) are not decayed; an empty group is left out."""
    return torch.optim.AdamW([g for g in _groups(model, weight_decay) if g["params"]], lr=lr)


def build_scheduler(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # never 0, so the first step already moves the weights
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def retarget_optimizer(optimizer: torch.optim.Optimizer, scheduler, model: torch.nn.Module, weight_decay: float) -> None:
    """Point the groups at the tensors whose requires_grad is set now, in the model's order."""
    wanted = {id(p) for p in model.parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in wanted:
                optimizer.state.pop(param, None)  # its moments leave with it
    for fresh in _groups(model, weight_decay):
        group = next((g for g in optimizer.param_groups if g.get("name") == fresh["name"]), None)
        if group is not None:
            group["params"] = fresh["params"]
        elif fresh["params"]:  # a kind of tensor that did not train before: a group, and the schedule's share of it
            base = scheduler.base_lrs[0]
            optimizer.add_param_group({**fresh, "lr": optimizer.param_groups[0]["lr"], "initial_lr": base})
            scheduler.base_lrs.append(base)
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
