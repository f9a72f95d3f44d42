"""The output head only where the loss is.

Once the prefix is frozen or cached, the head (hidden size x vocabulary) is a large share of a
step: on SmolLM2-135M its 49,152 x 576 matrix is about as much work as 8 trained blocks. SFT
puts the loss on the response tokens only, yet a causal LM projects every position and keeps
fp32 logits for the whole sequence. TargetHead patches the output layer's ``forward`` (the
instance, as the prefix runner does the blocks): while ``targets(labels)`` is active it gathers
the hidden states at the positions whose next token is a target and returns the *sum* of
their cross-entropies, computed in chunks of at most CHUNK_BYTES of fp32 logits (recomputed in
the backward pass when there is more than one chunk), so the whole sequence's logits never
exist. The model hands that sum back as its ``logits``. CPT targets every position: the same
path, chunked. Outside ``targets`` (generation) the layer is the plain linear map.

A model that transforms its logits after the head (Gemma 2's soft-capping) would change the
sum, so ``agrees`` checks the sum against the model's own loss on a real batch before the run
uses it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from freezetune.data.examples import IGNORE
from freezetune.plans.anatomy import head_problem
from freezetune.plans.memory import HEAD_CHUNK_BYTES

CHUNK_BYTES = HEAD_CHUNK_BYTES  # a module global, so that a test can make chunks small


def _loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def chunked_loss_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    recompute: bool = True,
) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T + bias, targets), one chunk of rows at a time.
    ``recompute`` False: keep every chunk's logits for the backward (a sharded head is not whole then)."""
    rows = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
    # one chunk: nothing to save
    recompute = recompute and torch.is_grad_enabled() and len(targets) > rows
    total = None
    for start in range(0, len(targets), rows):
        piece = (hidden[start : start + rows], weight, bias, targets[start : start + rows])
        part = (
            checkpoint(_loss_sum, *piece, use_reentrant=False) if recompute else _loss_sum(*piece)
        )
        total = part if total is None else total + part
    return total


class TargetHead:
    def __init__(self, model: nn.Module, recompute: bool = True):
        """``recompute`` False under FSDP and ZeRO, whose head weight is only gathered during its own forward."""
        self.model, self.recompute = model, recompute
        getter = getattr(model, "get_output_embeddings", None)
        self.layer = getter() if getter else None
        self._labels: torch.Tensor | None = None
        self._per_row = self._packed = False
        self.installed = False

    def problem(self) -> str | None:
        """Why the head cannot be restricted to the targets on this model, or None."""
        return head_problem(self.model)

    def install(self) -> TargetHead:
        """Patch the output layer, unless another patch (another TargetHead) already holds it."""
        if self.problem() is None and not self.installed and "forward" not in self.layer.__dict__:
            self.layer.forward = self._forward
            self.installed = True
        return self

    def remove(self) -> None:
        if self.installed:
            del self.layer.forward  # back to nn.Linear.forward
            self.installed = False

    @contextlib.contextmanager
    def targets(self, labels: torch.Tensor, per_row: bool = False, packed: bool = False):
        """Inside: the model's ``logits`` is the summed loss of the positions ``labels`` (unshifted) targets;
        ``per_row`` (evaluation): one sum per row, so that every item's loss is kept; ``packed``: the
        logits at those positions instead, one row per target, as ``logits[:, :-1][targets != IGNORE]``."""
        self._labels = labels if self.installed else None
        self._per_row, self._packed = per_row, packed
        try:
            yield self.installed
        finally:
            self._labels, self._per_row, self._packed = None, False, False

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._labels is None:
            return F.linear(hidden, self.layer.weight, self.layer.bias)
        labels = self._labels[:, 1:].to(hidden.device)  # position t predicts token t+1
        keep = labels != IGNORE
        if self._packed:
            return F.linear(hidden[:, :-1][keep], self.layer.weight, self.layer.bias)
        if self._per_row:
            return torch.stack(
                [
                    chunked_loss_sum(
                        hidden[r, :-1][keep[r]],
                        self.layer.weight,
                        self.layer.bias,
                        labels[r][keep[r]],
                        False,
                    )
                    if keep[r].any()
                    else hidden.new_zeros((), dtype=torch.float32)
                    for r in range(hidden.shape[0])
                ]
            )
        # hidden.sum() * 0 keeps the graph whole when a micro-batch has no target (DDP needs every backward)
        total = hidden.sum().float() * 0.0
        if keep.any():
            total = total + chunked_loss_sum(
                hidden[:, :-1][keep],
                self.layer.weight,
                self.layer.bias,
                labels[keep],
                self.recompute,
            )
        return total.reshape(1)

    def agrees(self, model: nn.Module, batch: dict[str, torch.Tensor], tolerance: float) -> bool:
        """Whether the summed loss equals the model's own mean loss times the target count on ``batch``."""
        if not self.installed:
            return False
        with torch.no_grad():
            # _labels is None: the plain head, the model's loss
            own = model(**batch, use_cache=False).loss
            with self.targets(batch["labels"]):
                summed = model(
                    **{k: v for k, v in batch.items() if k != "labels"}, use_cache=False
                ).logits
        count = int((batch["labels"][:, 1:] != IGNORE).sum())
        if count == 0:
            return True
        mean = float(summed.sum()) / count
        return abs(mean - float(own)) <= tolerance * max(1.0, abs(float(own)))


def checked_head(
    module: nn.Module, model, batch: dict[str, torch.Tensor], accelerator, sharded: bool = False
) -> tuple[TargetHead | None, str]:
    """A TargetHead on ``module`` once ``model`` (what the step calls: the module or its wrapper) gives the
    same loss through it as its own on ``batch``; else None. With a note for the run's log either way."""
    head = TargetHead(module, recompute=not sharded)
    if head.problem():
        return None, f"head: every position, as the model computes it ({head.problem()})"
    head.install()
    tolerance = 1e-4 if accelerator.mixed_precision == "no" else 1e-2
    with accelerator.autocast():
        agrees = head.agrees(model, batch, tolerance)
    if not agrees:
        head.remove()
        return None, (
            f"head: every position (the loss over the target positions alone did not match "
            f"{type(module).__name__}'s own loss on the first batch)"
        )
    return (
        head,
        "head: target positions only, cross-entropy in chunks (the loss matched the model's own on the first batch)",
    )
