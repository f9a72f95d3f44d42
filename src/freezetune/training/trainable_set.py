"""What trains at each step of a run: the plan, or the phase a schedule (plans/schedule.py) is in.
The one engine of a changing trainable set: `freezetune train`'s loop and the HF FreezeCallback both
drive their model through `advance` (phase tracking, the retarget, dropping the moments of what
rests) and arm the first-step check from `take_check`; each supplies only how its model retargets.

A schedule's tensors train in turns, so "the trained tensors" of a run is the union over the
phases so far: a checkpoint holds every one of them (a LISA block that trained in period 2 and
rests in period 5 still carries what it learned), and export merges them all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.schedule import Schedule, trainable_blocks
from freezetune.training.optimizer import drop_resting_moments


class TrainableSet:
    def __init__(self, universe: ResolvedPlan, schedule: Schedule | None, seed: int):
        self.universe, self.schedule, self.seed = universe, schedule, seed
        self.phase: int | None = None
        self.current = universe
        self._trained: set[str] = set() if schedule else set(universe.trainable_names())
        # what the model has set training: the whole plan, at first
        self.applied = universe.trainable_names()
        self.check: str | None = "full"  # the first-step check the coming step gets
        # LISA sample=gradient: each block's gradient score so far, and a resumed run's last draw
        self.scores: dict[int, float] = {}
        self._drawn: tuple[int, list[int]] | None = None

    def advance(
        self, step: int, apply: Callable[[ResolvedPlan], torch.optim.Optimizer | None]
    ) -> bool:
        """Bring the model to step ``step``'s set. ``apply`` (the driver's retarget: requires_grad, its
        optimizer's groups, the prefix runner) runs only when what trains changes, and returns the optimizer
        whose moments of the tensors that now rest are dropped. The new set's first step is checked again."""
        return self.move_to(self.at(step), apply)

    def move_to(
        self, plan: ResolvedPlan, apply: Callable[[ResolvedPlan], torch.optim.Optimizer | None]
    ) -> bool:
        """``advance``'s move, to any plan inside the universe: whether what trains changed."""
        names = plan.trainable_names()
        if names == self.applied:
            return False
        optimizer = apply(plan)
        if optimizer is not None:
            drop_resting_moments(optimizer)
        self.applied = names
        self.check = self.check or "light"
        return True

    def take_check(self) -> str | None:
        """The first-step check due now: "full" on a run's first step, "light" on the first step of a new set
        (frozen tensors by version counter, trained ones hashed), None otherwise. Taking it clears it."""
        check, self.check = self.check, None
        return check

    def at(self, step: int) -> ResolvedPlan:
        """The plan of optimizer step ``step`` (0-based): the plan itself without a schedule, else its phase's."""
        if self.schedule is None:
            return self.universe
        phase = self.schedule.phase(step)
        if phase != self.phase:
            self.phase = phase
            if self._drawn is not None and self._drawn[0] == phase:  # drawn before the resume
                self.current = self.schedule.plan_for(self.universe, self._drawn[1])
            else:
                self.current = self.schedule.plan_at(self.universe, phase, self.seed, self.scores)
            self._trained.update(self.current.trainable_names())
        return self.current

    def add_trained(self, names) -> None:
        """Tensors a checkpoint shows were trained before this process started (a resumed run)."""
        self._trained.update(names)

    @property
    def trained_names(self) -> list[str]:
        """Every tensor trained so far, in the model's order."""
        return [n for n in self.universe.trainable_names() if n in self._trained]

    @property
    def active_blocks(self) -> list[int]:
        return trainable_blocks(self.current)

    def state(self) -> dict:
        """For a checkpoint's state.json: the schedule's position (recomputable, recorded to be checked)."""
        if self.schedule is None:
            return {}
        saved = {
            "text": self.schedule.render(),
            "phase": self.phase,
            "active_blocks": self.active_blocks,
            "plan": self.current.plan.render(),
        }
        if self.schedule.sample == "gradient":  # not recomputable: the draws followed the gradients
            saved["scores"] = {str(b): v for b, v in sorted(self.scores.items())}
        return {"schedule": saved}

    @property
    def observes(self) -> bool:
        """Whether the steps must report their gradients (LISA sample=gradient)."""
        return self.schedule is not None and self.schedule.sample == "gradient"

    def observer(self, model: torch.nn.Module):
        """What a step calls with its gradients in place (TrainStep's ``observe``), or None."""
        return (lambda: self.observe(model)) if self.observes else None

    def restore(self, state: dict) -> None:
        """A resumed run's gradient scores and the blocks its last phase drew, from a checkpoint's state."""
        saved = state.get("schedule") or {}
        if self.observes and "scores" in saved:
            self.scores = {int(b): float(v) for b, v in saved["scores"].items()}
            self._drawn = (saved["phase"], list(saved["active_blocks"]))

    def observe(self, model: torch.nn.Module) -> None:
        """After a step's backward: each active block's gradient norm over its weight norm, averaged
        into its score (the old score weighs half), so later draws follow what training has seen."""
        active, params = set(self.active_blocks), dict(model.named_parameters())
        sums: dict[int, list[float]] = {}
        for entry in self.universe.anatomy.entries:
            param = params.get(entry.name)
            if entry.part != "block" or entry.layer not in active or param is None:
                continue
            if entry.name != entry.tensor or param.grad is None:
                continue
            grad, weight = sums.setdefault(entry.layer, [0.0, 0.0])
            sums[entry.layer] = [
                grad + float(param.grad.detach().float().pow(2).sum()),
                weight + float(param.detach().float().pow(2).sum()),
            ]
        for block, (grad, weight) in sums.items():
            ratio = (grad / weight) ** 0.5 if weight else 0.0
            old = self.scores.get(block)
            self.scores[block] = ratio if old is None else 0.5 * old + 0.5 * ratio
