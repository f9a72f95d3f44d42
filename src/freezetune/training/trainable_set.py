"""What trains at each step of a run: the plan, or the phase a schedule (plans/schedule.py) is in.
The one engine of a changing trainable set: `freezetune train`'s loop and the HF FreezeCallback both
follow it.

A schedule's tensors train in turns, so "the trained tensors" of a run is the union over the
phases so far: a checkpoint holds every one of them (a LISA block that trained in period 2 and
rests in period 5 still carries what it learned), and export merges them all.
"""

from __future__ import annotations

from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.schedule import Schedule, trainable_blocks


class TrainableSet:
    def __init__(self, universe: ResolvedPlan, schedule: Schedule | None, seed: int):
        self.universe, self.schedule, self.seed = universe, schedule, seed
        self.phase: int | None = None
        self.current = universe
        self._trained: set[str] = set() if schedule else set(universe.trainable_names())

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
        return {"schedule": {"text": self.schedule.render(), "phase": self.phase, "active_blocks": self.active_blocks,
                             "plan": self.current.plan.render()}}
