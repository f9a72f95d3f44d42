"""FreezeCallback: the first-step check, the logged trainable set, and schedules, inside a HF Trainer.

The Trainer builds its optimizer from the tensors that require grad when it starts, so a
schedule's plan (everything the schedule may ever train) is applied by ``freeze`` first and
the Trainer's AdamW holds all of it; at each step boundary the callback narrows the set to
the phase's blocks. A tensor that stops training gets no gradient, so torch's optimizers
skip it, and its moments are dropped from the optimizer's state, not kept for its return.
"""

from __future__ import annotations

import warnings

from transformers import TrainerCallback

from freezetune.errors import FreezetuneError
from freezetune.hf.freeze import FreezeHandle
from freezetune.plans.schedule import Schedule
from freezetune.training.guards import FirstStepGuard
from freezetune.training.trainable_set import TrainableSet


class FreezeCallback(TrainerCallback):
    def __init__(self, handle: FreezeHandle, schedule: str | Schedule | None = None, seed: int = 0):
        """``schedule``: 'gradual every=N [start=K step=S]' or 'lisa layers=K every=T', inside the frozen plan;
        ``seed``: the seed LISA draws its blocks with."""
        self.handle = handle
        self.schedule = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        if self.schedule is not None and self.schedule.sample == "gradient":
            raise FreezetuneError(
                f"schedule '{self.schedule.render()}': drawing by gradient scores needs the gradients "
                "of every step, which freezetune train reads and a Trainer callback does not; "
                "use sample=uniform here"
            )
        if self.schedule is not None:
            self.schedule.check(handle.universe)
        # the phases, as `train` follows them
        self.trainable = TrainableSet(handle.universe, self.schedule, seed)
        self.still, self.rate = False, None
        self.guard: FirstStepGuard | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        sharded = getattr(args, "deepspeed", None) or getattr(args, "fsdp", None)
        if self.schedule is not None and sharded:
            raise FreezetuneError(
                "FreezeCallback: a schedule changes the trainable set, but DeepSpeed and FSDP lay out "
                "their optimizer state once for a fixed set; drop the schedule or train without them"
            )
        if self.schedule is not None and state.max_steps > 0:
            notice = self.schedule.check_length(
                self.handle.universe, state.max_steps, "more max_steps"
            )
            if notice:  # the run ends before gradual unfreezing reaches the plan's lowest block
                warnings.warn(notice, stacklevel=2)
        # a second train() starts from the whole plan too
        if self.handle.resolved is not self.handle.universe:
            if not sharded:  # a sharded optimizer holds flat shards, not the model's tensors
                self._check_optimizer_holds(optimizer)
            self.handle.retarget(self.handle.universe)
        self.trainable = TrainableSet(self.handle.universe, self.schedule, self.trainable.seed)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        def retarget(plan):
            self.handle.retarget(plan)
            return optimizer  # the Trainer's AdamW already holds every tensor of the plan: only moments go

        self.trainable.advance(state.global_step, retarget)
        # the first step, and the first of each new set, are checked
        check = self.trainable.take_check()
        if check is not None:
            self.guard = self._guard(light=check == "light")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.guard is not None:
            self._checked(self.guard.check_gradients)
            groups = getattr(optimizer, "param_groups", None) or [{"lr": 1.0}]
            self.rate = max(group["lr"] for group in groups)
            self.still = self.rate == 0  # warmup's first step moves nothing

    def on_optimizer_step(self, args, state, control, **kwargs):
        # else: checked after the first step that can move weights
        if self.guard is not None and not self.still:
            self._checked(lambda: self.guard.check_update(self.rate))
            self.guard = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        extra = {"trainable_params": self.handle.trainable_params}
        if self.schedule is not None:
            extra["active_blocks"] = self.handle.active_blocks
        if logs is not None:
            logs.update(extra)  # reporters that run after this callback see them
        if state.log_history:
            state.log_history[-1].update(extra)  # the Trainer's record of this log

    def _check_optimizer_holds(self, optimizer) -> None:
        """The Trainer's optimizer over the whole plan: one built after a retarget lacks the rest, and
        its first step failed the check with "did not change after the optimizer step"."""
        if optimizer is None:
            return
        held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group["params"]}
        params = dict(self.handle.model.named_parameters())
        names = self.handle.universe.trainable_names()
        missing = [n for n in names if n in params and id(params[n]) not in held]
        if missing:
            raise FreezetuneError(
                f"FreezeCallback: the Trainer's optimizer was built after the handle was retargeted to "
                f"'{self.handle.resolved.plan.render()}', so it lacks {missing[0]} and the rest of the plan "
                f"freeze() applied ('{self.handle.universe.plan.render()}'); to train another plan, "
                "remove() the handle and freeze() the model again before building the Trainer"
            )

    def _guard(self, light: bool) -> FirstStepGuard:
        names = {name for name, p in self.handle.model.named_parameters() if p.requires_grad}
        return FirstStepGuard(self.handle.model, names, light=light)

    @staticmethod
    def _checked(check) -> None:
        try:
            check()
        except FreezetuneError as exc:
            raise FreezetuneError(f"FreezeCallback: {exc}; training stopped") from None
