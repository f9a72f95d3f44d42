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
            self.current = self.schedule.plan_at(self.universe, phase, self.seed)
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
        return {
            "schedule": {
                "text": self.schedule.render(),
                "phase": self.phase,
                "active_blocks": self.active_blocks,
                "plan": self.current.plan.render(),
            }
        }
