"""The DPO objective (Rafailov et al., 2023), computed the way TRL's DPOTrainer computes its default
("sigmoid" loss, reverse KL): a sequence's log-probability is the sum of its answer tokens'
log-probabilities; the loss is the mean over pairs of -log sigmoid(beta * ((policy chosen -
reference chosen) - (policy rejected - reference rejected))). Metrics carry TRL's names, so a
user reading metrics.jsonl finds what TRL's logs call them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freezetune.data.examples import IGNORE


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of its target tokens (labels are shifted inside: the logits
    at position t predict the label at t + 1; IGNORE counts nothing)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean sigmoid DPO loss over the pairs, and TRL's reward metrics (means over the pairs)."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
    }
    return loss, metrics
