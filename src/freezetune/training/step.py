"""One optimizer step, the same for every strategy and backend: `train`, the benchmark and
gradient probes all call this.

The loss of a step is the mean over *every* target token of its micro-batches on every
process. The target tokens are counted first (one all-reduce), then each micro-batch
backpropagates sum(its token losses) / N_step, so `--batch-size 8`, `--batch-size 4
--grad-accum 2` and 2 processes x 4 train the same model. A mean per micro-batch, divided
by the number of micro-batches, would weigh a one-word answer as much as a paragraph.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from freezetune.data.examples import IGNORE, TokenizedData, collate
from freezetune.data.order import BatchOrder
from freezetune.errors import FreezetuneError


class NonFiniteLoss(FreezetuneError):
    """The step's loss is nan or inf; nothing was stepped."""


@dataclass
class MicroBatch:
    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, labels (right-padded)
    keys: list[str] | None  # one prefix-cache key per row, or None: not cached
    lengths: list[int]  # real (unpadded) length of each row
    ids: list[int]  # each row's index in the training examples

    @property
    def targets(self) -> int:
        """Tokens the loss is taken on: labels are shifted inside the model, so position 0 never is."""
        return int((self.batch["labels"][:, 1:] != IGNORE).sum())


def micro_batches(
    examples: TokenizedData,
    order: BatchOrder,
    step: int,
    grad_accum: int,
    rank: int,
    world: int,
    pad_id: int,
    cached: bool = True,
) -> list[MicroBatch]:
    """This process's share of the micro-batches of optimizer step ``step`` (data/order.py decides which,
    counting pairs for preference data: both rows of a pair go together).
    ``cached``: give the rows their prefix-cache keys (False: they are never stored)."""
    out = []
    for micro in range(grad_accum):
        ids = examples.rows(order.share(step * grad_accum + micro, rank, world))
        rows = [examples.examples[i] for i in ids]
        keys = [f"train:{i}" for i in ids] if cached else None
        out.append(MicroBatch(collate(rows, pad_id), keys, [len(r.input_ids) for r in rows], ids))
    return out


class TrainStep:
    """``model``: what the backend wrapped (DDP, FSDP2, DeepSpeed engine or the model itself);
    ``runner``: the prefix runner, or None for a model left as transformers built it."""

    def __init__(
        self,
        model,
        backend,
        runner,
        lr_scheduler,
        accelerator,
        device: torch.device,
        world: int,
        head=None,
    ):
        """``head``: a TargetHead (training/head.py) that projects only the target positions, or None."""
        self.model, self.backend, self.runner, self.lr_scheduler = (
            model,
            backend,
            runner,
            lr_scheduler,
        )
        self.accelerator, self.device, self.world, self.head = accelerator, device, world, head

    def _sum(self, *values: float) -> list[float]:
        """Sums over all processes, in one all-reduce however many values."""
        if self.world == 1:
            return [float(v) for v in values]
        summed = self.accelerator.reduce(
            torch.tensor([float(v) for v in values], device=self.device), "sum"
        )
        return summed.tolist()

    def forward_backward(self, micro: list[MicroBatch]) -> dict:
        """Gradients of the step's token-mean loss, accumulated on the trainable tensors; no weight moves.
        Returns the loss (global token mean), the target tokens and the attended tokens of all processes."""
        counts = [m.targets for m in micro]
        (total,) = self._sum(sum(counts))
        if total == 0:
            raise FreezetuneError(
                "a training step holds no target token: every answer was cut off by --seq-len"
            )
        loss_sum, attended = 0.0, 0
        targeted = self.head is not None and self.head.installed
        for index, (m, count) in enumerate(zip(micro, counts)):
            batch = {k: v.to(self.device) for k, v in m.batch.items()}
            around = (
                self.runner.batch(m.keys, m.lengths)
                if self.runner is not None
                else contextlib.nullcontext()
            )
            # the model returns the summed loss of the targets as its logits (training/head.py)
            if targeted:
                with around, self.head.targets(batch["labels"]), self.accelerator.autocast():
                    summed = self.model(
                        **{k: v for k, v in batch.items() if k != "labels"}, use_cache=False
                    ).logits.sum()
                # the step's token mean, times what the backends average over
                scaled = summed * (self.world / total)
                loss_sum += summed.item()
            else:
                with around, self.accelerator.autocast():
                    output = self.model(**batch, use_cache=False)
                # the model's loss is a mean over this micro-batch's targets: weigh it by their share of the step's,
                # times the process count the backends average gradients over (exactly 1.0 for one batch, one process)
                weight = count * self.world / total
                # a micro-batch without targets still runs backward: under DDP every process must
                scaled = output.loss * weight if count else output.logits.sum() * 0.0
                loss_sum += output.loss.item() * count if count else 0.0
            self.backend.backward(scaled, last=index == len(micro) - 1)
            attended += int(batch["attention_mask"].sum())
        loss_total, attended_total = self._sum(loss_sum, attended)
        return {"loss": loss_total / total, "targets": int(total), "tokens": int(attended_total)}

    def __call__(
        self, micro: list[MicroBatch], max_grad_norm: float, guard=None, observe=None
    ) -> dict:
        """One optimizer step: forward-backward, the first-step checks, clipping, AdamW, the schedule.
        ``observe``: called with the gradients in place, before the optimizer steps (a LISA that draws
        by gradient scores reads them there)."""
        started = time.perf_counter()
        measured = self.forward_backward(micro)
        if not math.isfinite(measured["loss"]):
            raise NonFiniteLoss(f"the loss is {measured['loss']}")
        if guard is not None:
            guard.check_gradients()
        if observe is not None:
            observe()
        rates = self.lr_scheduler.get_last_lr()  # each group's rate for this step
        lr = rates[0]
        self.backend.step(max_grad_norm)
        self.lr_scheduler.step()
        if guard is not None:
            guard.check_update(max(rates))
        elapsed = time.perf_counter() - started
        return {
            "loss": measured["loss"],
            "lr": lr,
            "tokens": measured["tokens"],
            "targets": measured["targets"],  # the tokens the loss is over
            "tokens_per_s": measured["tokens"] / elapsed,
            "step_time_s": elapsed,
            **measured.get("metrics", {}),  # an objective's own (DPO's rewards)
        }
