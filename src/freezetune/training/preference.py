"""Preference tuning on the one training step: DPO's loss over pairs, and its held-out evaluation.

A micro-batch holds whole pairs (data/order.py counts pairs, data/examples.py lays each pair's
chosen and rejected rows side by side), so one forward runs the frozen prefix once for both
answers, and the reference (training/dpo.py) reuses it. The step's loss is the mean over every
pair of the step on every process, weighed as the SFT step weighs tokens.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch

from freezetune.data.examples import Example, collate, pad_token_id
from freezetune.training.dpo import (
    REWARD_METRICS,
    Reference,
    pair_terms,
    reward_sums,
    row_log_probs,
)
from freezetune.training.evaluation import batches
from freezetune.training.step import MicroBatch, TrainStep

if TYPE_CHECKING:
    from freezetune.training.loop import TrainingLoop


class PreferenceStep(TrainStep):
    def __init__(self, *args, reference: Reference, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference, self.beta = reference, beta

    def _reference(self, keys: list[str], batch: dict) -> torch.Tensor:
        """The rows' reference log-probabilities, computed in eval mode (no dropout) when not yet known."""
        if self.reference.known(keys):
            return self.reference.log_probs(keys, batch)
        self.runner.model.eval()
        try:
            with self.accelerator.autocast():
                return self.reference.log_probs(keys, batch, self.runner, self.head)
        finally:
            self.runner.train_mode()

    def forward_backward(self, micro: list[MicroBatch]) -> dict:
        """Gradients of the step's pair-mean DPO loss; its loss, TRL's reward metrics (pair means over all
        processes) and the attended tokens."""
        (total,) = self._sum(sum(len(m.ids) // 2 for m in micro))
        sums, attended = [0.0] * (1 + len(REWARD_METRICS)), 0
        for index, m in enumerate(micro):
            batch = {k: v.to(self.device) for k, v in m.batch.items()}
            with self.runner.batch(m.keys, m.lengths), self.accelerator.autocast():
                policy = row_log_probs(self.model, batch, self.head)
            reference = self._reference([f"train:{i}" for i in m.ids], batch)
            losses, chosen, rejected = pair_terms(policy, reference, self.beta)
            # times the process count the backends average gradients over, as the SFT step does
            self.backend.backward(losses.sum() * (self.world / total), last=index == len(micro) - 1)
            part = [float(losses.detach().sum()), *reward_sums(chosen, rejected)]
            sums = [a + b for a, b in zip(sums, part)]
            attended += int(batch["attention_mask"].sum())
        *summed, attended_total = self._sum(*sums, attended)
        metrics = {name: value / total for name, value in zip(REWARD_METRICS, summed[1:])}
        return {
            "loss": summed[0] / total,
            "targets": int(total),
            "tokens": int(attended_total),
            "metrics": metrics,
        }


def make_reference(model, resolved, config) -> Reference | None:
    """DPO's reference over every tensor the plan may train (a schedule's too); None for SFT and CPT."""
    if config.objective != "dpo":
        return None
    return Reference(model, resolved.trainable_names(), config.precompute_ref)


def make_step(parts: tuple, reference: Reference | None, beta: float) -> TrainStep:
    """The loop's step: TrainStep's arguments ``parts``; DPO's when there is a reference."""
    if reference is None:
        return TrainStep(*parts)
    return PreferenceStep(*parts, reference=reference, beta=beta)


def score_rows(
    model, examples: list[Example], rows: list[int], prefix: str, settings: dict, progress=None
):
    """The policy's log-probability of ``rows`` of ``examples``, without autograd, in batches of
    ``batch_size`` pairs; yields each batch's row keys ("eval:3"), tensors and scores. ``settings``:
    batch_size, pad_id, device, runner and head, as the loop holds them."""
    runner, head, size = settings["runner"], settings["head"], 2 * settings["batch_size"]
    for start in batches(len(rows), size, progress):
        chunk = rows[start : start + size]
        picked = [examples[r] for r in chunk]
        batch = {
            k: v.to(settings["device"]) for k, v in collate(picked, settings["pad_id"]).items()
        }
        keys = [f"{prefix}:{r}" for r in chunk]
        lengths = [len(e.input_ids) for e in picked]
        around = runner.batch(keys, lengths) if runner is not None else contextlib.nullcontext()
        with torch.no_grad(), around:
            policy = row_log_probs(model, batch, head)
        yield keys, batch, policy


def precompute_reference(model, reference: Reference, parts: list[tuple], settings: dict) -> float:
    """--precompute-ref: the model, still the base one, scores every row of ``parts`` ((examples, rows,
    prefix) each) once, and the scores are the reference's. The prefix cache keeps the prefix output it
    ran, so the first epoch replays it. Returns the seconds it took."""
    started, was_training = time.perf_counter(), model.training
    model.eval()
    with torch.no_grad():
        for examples, rows, prefix in parts:
            for keys, _, policy in score_rows(model, examples, rows, prefix, settings):
                reference.remember(keys, policy)
    if was_training:
        model.train()
    return time.perf_counter() - started


def preference_evaluation(
    model,
    reference: Reference,
    examples: list[Example],
    beta: float,
    settings: dict,
    label: str = "",
    progress=None,
) -> dict:
    """Held-out pairs: the DPO loss against the reference (eval_loss), how often the implicit reward
    ranks chosen over rejected (eval_accuracy, TRL's rewards/accuracies) and how often the policy alone
    gives chosen the higher log-probability (eval_policy_accuracy: meaningful before training too)."""
    started, was_training = time.perf_counter(), model.training
    model.eval()
    runner, head, items = settings["runner"], settings["head"], []
    rows = list(range(len(examples)))
    for keys, batch, policy in score_rows(model, examples, rows, "eval", settings, progress):
        with torch.no_grad():
            ref = reference.log_probs(keys, batch, runner, head)
        losses, chosen, rejected = pair_terms(policy, ref, beta)
        first = len(items)  # an item's id is its pair's place in the held-out set
        for i, (loss, c, r) in enumerate(zip(losses.tolist(), chosen.tolist(), rejected.tolist())):
            prefers = bool(policy[2 * i] > policy[2 * i + 1])
            # loss_sum over 1 token: a comparison's item mean is then the pair's loss
            items.append(
                {
                    "id": first + i,
                    "loss_sum": loss,
                    "tokens": 1,
                    "preferred": c > r,
                    "margin": c - r,
                    "policy_prefers_chosen": prefers,
                }
            )
    if was_training:
        model.train()
    pairs = max(len(items), 1)
    return {
        "label": label,
        "eval_loss": sum(i["loss_sum"] for i in items) / pairs,
        "eval_accuracy": sum(i["preferred"] for i in items) / pairs,
        "eval_margin": sum(i["margin"] for i in items) / pairs,
        "eval_policy_accuracy": sum(i["policy_prefers_chosen"] for i in items) / pairs,
        "eval_pairs": len(items),
        "items": items,
        "seconds": {"evaluation": time.perf_counter() - started, "generation": 0.0},
    }


def evaluate_base(
    model, tokenizer, examples: list[Example], config, device, progress: bool
) -> dict:
    """The base model's preference evaluation, as its own reference (a comparison's "before" row)."""
    settings = {"batch_size": config.batch_size, "pad_id": pad_token_id(tokenizer)}
    settings.update(device=device, runner=None, head=None)
    bar = "base pairs" if progress else None
    reference = Reference(model, [], precompute=False)  # nothing trains: the model is its reference
    return preference_evaluation(model, reference, examples, config.beta, settings, "base", bar)


def describe_preferences(result: dict) -> str:
    """A preference evaluation as the run's log shows it."""
    return (
        f"{result['label']}: eval DPO loss {result['eval_loss']:.4f}, reward accuracy "
        f"{100 * result['eval_accuracy']:.1f}%, policy prefers chosen in "
        f"{100 * result['eval_policy_accuracy']:.1f}% of {result['eval_pairs']} held-out pairs"
    )


def scoring(loop: TrainingLoop) -> dict:
    """What scoring pairs without autograd needs, as ``loop`` holds it."""
    keys = ("batch_size", "pad_id", "device", "runner", "head")
    values = (loop.config.batch_size, loop.pad_id, loop.device, loop.runner, loop.head)
    return dict(zip(keys, values))


def evaluate_preferences(loop: TrainingLoop, label: str) -> dict:
    """The loop's held-out pairs, scored against its reference."""
    bar = f"{label} pairs" if loop.progress else None
    held = loop.session.eval.examples
    return preference_evaluation(
        loop.model, loop.reference, held, loop.config.beta, scoring(loop), label, bar
    )


def precompute_for(loop: TrainingLoop) -> None:
    """--precompute-ref: this process's training pairs and every held-out pair, scored by the base."""
    train, held = loop.session.train, loop.session.eval
    mine = train.rows(loop.order.shard(loop.rank, loop.world))
    parts = [
        (train.examples, mine, "train"),
        (held.examples, list(range(len(held.examples))), "eval"),
    ]
    with loop.accelerator.autocast():
        seconds = precompute_reference(loop.model, loop.reference, parts, scoring(loop))
    loop.log(
        f"reference: {len(mine) // 2} training and {held.units} held-out pairs scored "
        f"by the base model in {seconds:.1f} s"
    )
