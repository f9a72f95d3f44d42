"""Checks after the first optimizer step: the plan that was resolved is the plan that ran.

Frozen tensors must be bit-identical (no stray optimizer state, weight decay or momentum),
and every trainable tensor must have received a gradient and, where that gradient was not
all zeros, changed (catches tensors left out of the optimizer, and checkpointing that
silently cut the gradient off). A zero gradient is legitimate: LoRA's A matrices get one on
the first step, because B starts at zero.
"""

from __future__ import annotations

import torch

from freezetune.distributed.sharding import local
from freezetune.errors import FreezetuneError

INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
CHUNK = 1 << 24


def _digest(tensor: torch.Tensor) -> tuple[int, int]:
    """A fingerprint of the tensor's bits, computed where the tensor lives (no copy to the host): the
    sum of its elements read as integers, and the sum weighted by position, in chunks so the
    temporary stays small. Any changed element changes the first; moved elements change the second."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return 0, 0
    bits = flat.view(INTS[flat.element_size()])
    total = weighted = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, bits.numel(), CHUNK):
        piece = bits[start : start + CHUNK].to(torch.int64)
        total = total + piece.sum()
        weighted = (
            weighted
            + (piece * torch.arange(start + 1, start + 1 + piece.numel(), device=flat.device)).sum()
        )
    return int(total), int(weighted)


def _resolution(tensor: torch.Tensor) -> float:
    """The smallest step that moves the tensor's largest element (AdamW's first step moves each by about lr)."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return 0.0
    return torch.finfo(tensor.dtype).eps * float(tensor.detach().abs().max())


def _some(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


class FirstStepGuard:
    def __init__(
        self,
        model: torch.nn.Module,
        trainable: set[str],
        grad=lambda param: param.grad,
        view=lambda param: local(param.detach()),
        light: bool = False,
    ):
        """``grad`` and ``view``: a parameter's gradient and value where the backend keeps them (ZeRO holds
        gradients outside .grad; under FSDP each process checks its own shards). ``light`` (a schedule's
        new set, checked again): frozen tensors by their version counter, which every in-place write,
        an optimizer's included, advances; only the trained ones are hashed."""
        self.params = dict(model.named_parameters())
        self.trainable = trainable
        self.grad, self.view = grad, view
        self.before = {
            name: _digest(view(p)) if name in trainable or not light else p._version
            for name, p in self.params.items()
        }
        self.light = light
        self.zero_gradient: set[str] = set()

    def check_gradients(self) -> None:
        # once each: under ZeRO every read is a collective
        grads = {n: self.grad(p) for n, p in self.params.items()}
        missing = [n for n in self.params if n in self.trainable and grads[n] is None]
        if missing:
            raise FreezetuneError(
                f"first step: trainable tensor {_some(missing)} received no gradient; "
                "the forward pass does not reach it, so training it would do nothing"
            )
        self.zero_gradient = {n for n in self.trainable if not bool(local(grads[n]).any())}
        leaked = [n for n in self.params if n not in self.trainable and grads[n] is not None]
        if leaked:
            raise FreezetuneError(
                f"first step: frozen tensor {_some(leaked)} received a gradient; the plan was not applied"
            )

    def check_update(self, lr: float | None = None) -> None:
        """``lr``: the largest rate of the step; a tensor it could not visibly move (a long warmup's first
        step, below the float resolution of the tensor's largest element) is not held against the plan."""
        moved = [
            n
            for n, p in self.params.items()
            if n not in self.trainable
            and (p._version if self.light else _digest(self.view(p))) != self.before[n]
        ]
        if moved:
            raise FreezetuneError(
                f"first step: frozen tensor {_some(moved)} changed; stopping before it drifts further"
            )
        still = [
            n
            for n, p in self.params.items()
            if n in self.trainable
            and n not in self.zero_gradient
            and _digest(self.view(p)) == self.before[n]
        ]
        still = [n for n in still if lr is None or lr >= _resolution(self.view(self.params[n]))]
        if still:
            raise FreezetuneError(
                f"first step: trainable tensor {_some(still)} did not change after the optimizer step, "
                "though its gradient was not zero"
            )


def first_step_guard(loop, check: str | None) -> FirstStepGuard | None:
    """The first-step check ``TrainableSet.take_check`` asked for, over what ``loop`` trains now: frozen
    tensors by version counter where the backend's writes advance it (hashing 100M frozen weights cost
    more than a step), hashed where they may not."""
    if check is None:
        return None
    return FirstStepGuard(
        loop.model,
        set(loop.trainable.applied),
        loop.backend.grad,
        loop.backend.view,
        light=check == "light" or loop.backend.writes_counted,
    )
