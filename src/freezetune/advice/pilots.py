"""Pilot runs: static evidence cannot say which layers a task needs, a little training can.

The strongest candidates within the memory budget (the best of each family: top, top with the head,
MLP-only, attention-only, bottom and middle windows, the gradient-ranked blocks, bottom and top)
train briefly on the user's data through the same TrainStep as `train`, from the base weights, in
the same order of examples, at one rate (given, or searched the way `compare` searches: the grid's
rates on the best-evidenced candidate, scored by validation loss). Each is then scored on the
validation loss and the KL from the base on the retain set, per item, so that two pilots compare
on the same items. Successive halving spends the budget: every candidate S steps, the better half
(nearest the loss/KL frontier) 2S from the base again, and so on until two remain.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from freezetune.advice.candidates import Candidate
from freezetune.advice.pilot_choice import better_half
from freezetune.advice.pilot_data import EVAL_BATCH, PilotData
from freezetune.comparison.forgetting import forgetting
from freezetune.comparison.strategies import DEFAULT_LR, LR_GRID
from freezetune.data.examples import collate
from freezetune.errors import FreezetuneError
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import apply_plan, resolve
from freezetune.training.evaluation import eval_loss
from freezetune.training.head import TargetHead
from freezetune.training.optimizer import build_lr_scheduler, build_optimizer
from freezetune.training.prefix import PrefixRunner
from freezetune.training.step import MicroBatch, NonFiniteLoss, TrainStep

PLAN_RATE = DEFAULT_LR["plan"]  # the pilots search compare's default grid around its plan rate
RATE_GRID = tuple(float(factor) for factor in LR_GRID.split(","))


@dataclass
class PilotBudget:
    """How much the halving rounds may train: optimizer steps over all pilots, or seconds (converted
    to steps from the probe's measured step time and each candidate's predicted ratio)."""

    steps: int | None = None
    seconds: float | None = None


@dataclass
class PilotRequest:
    data: PilotData
    budget: PilotBudget
    rate: float | None = None  # None: searched over RATE_GRID
    count: int = 6  # candidates in the first round
    prefer: str = "balanced"  # quality, forgetting or balanced (pilot_choice.PREFER)


def choose_pilots(found: list[Candidate], budget_bytes: int, count: int) -> list[Candidate]:
    """Up to ``count`` candidates within the budget: the best-evidenced of each family first (so the
    pilots span the depth), then the next best by evidence."""
    fitting = sorted(
        (c for c in found if c.memory_estimate_bytes <= budget_bytes and c.score > 0),
        key=lambda c: (-c.score, c.memory_estimate_bytes),
    )
    firsts = [c for i, c in enumerate(fitting) if c.family not in {d.family for d in fitting[:i]}]
    chosen = firsts[:count]
    return chosen + [c for c in fitting if c not in chosen][: count - len(chosen)]


def rounds(count: int) -> list[int]:
    """How many pilots each round trains: all, then the better half, until two remain."""
    sizes = [count]
    while sizes[-1] > 2:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def first_steps(budget: PilotBudget, sizes: list[int], step_seconds: float) -> int:
    """Round 0's steps S (round r trains 2^r S) so that the rounds spend the budget; ``step_seconds``
    is the pilots' mean predicted step time."""
    weight = sum(size * 2**r for r, size in enumerate(sizes))
    steps = budget.steps if budget.steps is not None else budget.seconds / max(step_seconds, 1e-6)
    return max(1, int(steps // weight))


def _item_means(sums: list[float], tokens: list[int]) -> list[float]:
    return [s / t if t else 0.0 for s, t in zip(sums, tokens)]


def score(model, data: PilotData, device, runner=None) -> dict:
    """Validation loss and KL from the base, overall and per item (the items pair across pilots).
    ``runner``: the pilot's prefix runner, replaying the base's prefix outputs it has cached."""
    head = TargetHead(model).install()
    try:
        val = eval_loss(
            model, runner, data.validation, EVAL_BATCH, data.pad_id, device, "val", head=head
        )
    finally:
        head.remove()
    drift = forgetting(
        model, data.retain, data.reference, EVAL_BATCH, data.pad_id, device, runner=runner
    )
    return {
        "val_loss": val["loss"],
        "kl": drift["retain_kl"],
        "val_items": _item_means(val["item_loss_sums"], val["item_tokens"]),
        "kl_items": [
            i["kl_sum"] / i["tokens"] if i["tokens"] else 0.0 for i in drift["retain_kl_items"]
        ],
    }


def train_pilot(
    model, anatomy, plan: str, steps: int, rate: float, data: PilotData, accelerator
) -> dict:
    """Train ``plan`` for ``steps`` from the base weights, score it, and put the weights back. Every
    pilot sees the base's frozen prefix: its output per row and depth, cached once in ``data.cache``,
    serves every later pilot (and the scoring) at that depth."""
    from freezetune.distributed.backends import Replicated

    resolved = resolve(FreezePlan.parse(plan), anatomy)
    apply_plan(model, resolved)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in trained.items()}
    backend = Replicated(accelerator)
    wrapped, optimizer = backend.wrap(model, lambda m: build_optimizer(m, rate, 0.0))
    schedule = build_lr_scheduler(optimizer, math.ceil(0.1 * steps), steps)
    runner = PrefixRunner(model, resolved, cache=data.cache).install()
    head = TargetHead(model).install()
    step = TrainStep(wrapped, backend, runner, schedule, accelerator, accelerator.device, 1, head)
    rows, size, losses = data.train, data.batch_size, []
    try:
        runner.probe(accelerator.device)
        runner.train_mode()
        started = time.perf_counter()
        for index in range(steps):  # the same rows in the same order for every pilot
            ids = [(index * size + j) % len(rows) for j in range(size)]
            batch = collate([rows[i] for i in ids], data.pad_id)
            keys = [f"train:{i}" for i in ids]
            micro = MicroBatch(batch, keys, [len(rows[i].input_ids) for i in ids], ids)
            losses.append(step([micro], 1.0)["loss"])
        seconds = time.perf_counter() - started
        head.remove()
        measured = score(model, data, accelerator.device, runner)
    finally:
        head.remove()
        runner.remove()
        with torch.no_grad():
            for name, param in trained.items():
                param.copy_(saved[name])
                param.grad = None
        optimizer.state.clear()
    return {
        **measured,
        "step_time_s": seconds / max(steps, 1),
        "train_loss": losses[-1] if losses else None,
    }


def _attempt(
    model, anatomy, plan: str, steps: int, rate: float, data: PilotData, accelerator
) -> dict:
    """A pilot's scores, or why it has none: a pilot whose loss diverges is recorded, not fatal."""
    try:
        return train_pilot(model, anatomy, plan, steps, rate, data, accelerator)
    except NonFiniteLoss as exc:
        return {
            "failed": f"diverged: {exc}",
            "val_loss": None,
            "kl": None,
            "val_items": [],
            "kl_items": [],
            "step_time_s": None,
            "train_loss": None,
        }


def _search_rate(
    model, anatomy, plan: str, steps: int, data: PilotData, accelerator, say
) -> tuple[float, list]:
    """The rate of compare's default grid with the lowest validation loss on ``plan``, and every result."""
    grid = [float(f"{PLAN_RATE * f:.3g}") for f in RATE_GRID]
    say(f"pilots: searching the rate over {', '.join(f'{r:g}' for r in grid)} on '{plan}'")
    search = [
        {
            "lr": rate,
            "steps": steps,
            "val_loss": _attempt(model, anatomy, plan, steps, rate, data, accelerator)["val_loss"],
        }
        for rate in grid
    ]
    finite = [s for s in search if s["val_loss"] is not None]
    if not finite:
        raise FreezetuneError(
            f"every rate of the pilots' search ({', '.join(f'{r:g}' for r in grid)}) diverged on '{plan}'; "
            "give a lower --lr"
        )
    return min(finite, key=lambda s: s["val_loss"])["lr"], search


def run_pilots(
    model,
    anatomy,
    chosen: list[Candidate],
    request: PilotRequest,
    accelerator,
    step_seconds: float,
    log=None,
) -> dict:
    """The base's scores, the rate (given or searched), then successive halving over ``chosen``.
    ``step_seconds``: full fine-tuning's measured step time, which the candidates' ratios scale."""
    say = log or (lambda line: None)
    data, started = request.data, time.perf_counter()
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    sizes = rounds(len(chosen))
    mean_ratio = sum(c.predicted_step_ratio for c in chosen) / len(chosen)
    first = first_steps(request.budget, sizes, mean_ratio * step_seconds)
    rate, search = request.rate, []
    try:
        base = score(model, data, accelerator.device)
        # compare's rate search, on the best-evidenced pilot, at twice round 1's steps
        if rate is None:
            rate, search = _search_rate(
                model, anatomy, chosen[0].plan, 2 * first, data, accelerator, say
            )
        pilots, alive = [], list(chosen)
        for number, size in enumerate(sizes):
            steps, measured = first * 2**number, []
            for candidate in alive[:size]:
                say(
                    f"pilot round {number + 1}/{len(sizes)}: '{candidate.plan}', {steps} steps at lr {rate:g}"
                )
                measured.append(
                    {
                        "plan": candidate.plan,
                        "round": number + 1,
                        "steps": steps,
                        **_attempt(model, anatomy, candidate.plan, steps, rate, data, accelerator),
                        "memory_estimate_bytes": candidate.memory_estimate_bytes,
                        "predicted_step_time_s": candidate.predicted_step_ratio * step_seconds,
                    }
                )
            pilots += measured
            if number + 1 < len(sizes):
                trained = [p for p in measured if p.get("failed") is None]
                kept = {p["plan"] for p in better_half(trained, sizes[number + 1], request.prefer)}
                alive = [c for c in alive if c.plan in kept]
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(trainable[name])
    return {
        "rate": rate,
        "rate_search": search,
        "base": base,
        "pilots": pilots,
        "cost_s": time.perf_counter() - started,
    }
