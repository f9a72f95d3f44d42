"""The DPO objective (Rafailov et al., 2023), computed the way TRL's DPOTrainer computes its default
("sigmoid" loss, reverse KL): a sequence's log-probability is the sum of its answer tokens'
log-probabilities; the loss is the mean over pairs of -log sigmoid(beta * ((policy chosen -
reference chosen) - (policy rejected - reference rejected))). Metrics carry TRL's names, so a
user reading metrics.jsonl finds what TRL's logs call them.

The reference is the base model, and freezing makes it cheap: the frozen prefix computes the same
output for the policy and the reference, so the reference reuses the prefix output the policy's
forward just produced (or replayed from the prefix cache) and runs only the blocks above it and
the head, with a frozen copy of the *trained* tensors in place of the policy's. A pair's reference
log-probabilities never change, so each is computed once and kept (`memo`, saved in checkpoints);
later epochs run no reference at all. With --precompute-ref every pair is scored by the model
itself before the first step (the policy is the base model then) and no copy is held.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.func import functional_call

from freezetune.data.examples import IGNORE
from freezetune.errors import FreezetuneError


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of its target tokens (labels are shifted inside: the logits
    at position t predict the label at t + 1; IGNORE counts nothing)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(dim=-1)


def row_log_probs(forward, batch: dict[str, torch.Tensor], head=None) -> torch.Tensor:
    """Each row's summed answer log-probability under ``forward`` (a model, or a call standing for one);
    with a TargetHead the head projects the answer positions only."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if head is not None and head.installed:
        with head.targets(batch["labels"], per_row=True):  # its logits: each row's summed loss
            return -forward(**inputs, use_cache=False).logits.float()
    return sequence_log_probs(forward(**inputs, use_cache=False).logits, batch["labels"])


def pair_terms(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows as the data lays them out (chosen at even rows, rejected at odd): each pair's loss, and its
    chosen and rejected rewards (beta times the log-ratio to the reference)."""
    chosen = beta * (policy[0::2] - reference[0::2])
    rejected = beta * (policy[1::2] - reference[1::2])
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def reward_sums(chosen: torch.Tensor, rejected: torch.Tensor) -> list[float]:
    """Sums over pairs of TRL's reward metrics (REWARD_METRICS order), to be divided by the pairs."""
    return [
        float(chosen.sum()),
        float(rejected.sum()),
        float((chosen > rejected).float().sum()),
        float((chosen - rejected).sum()),
    ]


REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean sigmoid DPO loss over the pairs, and TRL's reward metrics (means over the pairs)."""
    policy = torch.stack([policy_chosen, policy_rejected], dim=1).flatten()
    reference = torch.stack([reference_chosen, reference_rejected], dim=1).flatten()
    losses, chosen, rejected = pair_terms(policy, reference, beta)
    sums = reward_sums(chosen, rejected)
    return losses.mean(), {name: s / len(losses) for name, s in zip(REWARD_METRICS, sums)}


class Reference:
    """The base model's log-probability of every row the run scores, by row key ("train:7", "eval:3")."""

    def __init__(self, model: torch.nn.Module, names: list[str], precompute: bool):
        """``names``: every tensor the plan may train, copied now, before a step or a resume moves them."""
        self.model, self.precomputed = model, precompute
        params = dict(model.named_parameters())
        self.tensors = {} if precompute else {n: params[n].detach().clone() for n in names}
        self.memo: dict[str, float] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def describe(self) -> str:
        if self.precomputed:
            return "reference: every pair scored by the base model before training (--precompute-ref); no weights held"
        copied = f"a copy of the {len(self.tensors)} tensors the policy trains ({self.nbytes / 2**20:.1f} MiB)"
        # the weights policy and reference share: every one the copy does not stand in for
        frozen = sum(1 for _ in self.model.parameters()) - len(self.tensors)
        if not frozen:  # full fine-tuning: nothing to share
            return f"reference: the base model, as {copied}"
        return f"reference: the base model, as the policy's {frozen} frozen tensors (shared) and {copied}"

    def known(self, keys: list[str]) -> bool:
        return all(k in self.memo for k in keys)

    def log_probs(self, keys: list[str], batch: dict, runner=None, head=None) -> torch.Tensor:
        """The rows' reference log-probabilities: kept ones, else computed now. Call it right after the
        policy's forward over the same batch: the prefix output it captured stands in for the prefix."""
        if not self.known(keys):
            if self.precomputed:
                missing = next(k for k in keys if k not in self.memo)
                raise FreezetuneError(f"--precompute-ref: no reference score for row {missing}")
            shared = runner is not None and runner.prefix_is_base and runner.captured is not None
            with (
                torch.no_grad(),
                runner.replaying(runner.captured) if shared else contextlib.nullcontext(),
            ):
                values = row_log_probs(
                    lambda **kw: functional_call(self.model, self.tensors, (), kw), batch, head
                )
            self.remember(keys, values)
        device = batch["input_ids"].device
        return torch.tensor([self.memo[k] for k in keys], dtype=torch.float32, device=device)

    def remember(self, keys: list[str], values: torch.Tensor) -> None:
        self.memo.update(zip(keys, values.float().tolist()))

    def state(self, accelerator) -> dict:
        """What a checkpoint keeps: every process's scores (each holds its own shard's)."""
        memo = dict(self.memo)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            for part in gather_object([self.memo]):
                memo.update(part)
        return {"reference_logps": memo}

    def restore(self, state: dict) -> None:
        self.memo.update(state.get("reference_logps", {}))
