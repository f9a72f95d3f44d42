"""Where the loop's gradients and optimizer state live: one process or DDP, FSDP2, or DeepSpeed ZeRO.

The training loop calls only these methods, so every strategy runs the same loop whatever
the backend. Each backend wraps the model after the plan froze it, and builds the optimizer
over the trainable tensors only; what differs is who reduces gradients, who clips, and how a
checkpoint reads and restores whole tensors from the pieces each process holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from freezetune.distributed.sharding import FsdpSettings, ZeroSettings, full, local, shard_model
from freezetune.distributed.state import (
    apply_trainable,
    check_same_groups,
    load_optimizer_state,
    optimizer_state,
)
from freezetune.errors import FreezetuneError
from freezetune.plans.resolution import apply_plan


class Replicated:
    """One process, or DDP through accelerate: every process holds the same whole state."""

    gathers_everywhere = False  # the main process alone can read a checkpoint's worth of state
    # torch's AdamW writes the weights in place, through their version counters: a frozen tensor the
    # optimizer touched shows in its counter, so the first-step check need not hash the frozen weights
    writes_counted = True

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def wrap(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        """Returns (model to call, the torch optimizer the schedule steers)."""
        optimizer = make_optimizer(model)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        return self.model, optimizer

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """``loss``: already normalised over the whole step (training/step.py)."""
        self.accelerator.backward(loss)

    def grad(self, param: nn.Parameter) -> torch.Tensor | None:
        return param.grad

    def step(self, max_grad_norm: float) -> None:
        if max_grad_norm:
            self._clip(max_grad_norm)
        self.optimizer.step()
        # None, not zeros: momentum must not move frozen weights
        self.optimizer.zero_grad(set_to_none=True)

    def _clip(self, max_grad_norm: float) -> None:
        self.accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm)

    def value(self, param: nn.Parameter) -> torch.Tensor:
        """The whole trained tensor, as a checkpoint stores it."""
        return full(param.detach())

    def view(self, param: nn.Parameter) -> torch.Tensor:
        """What this process holds of ``param``, for the first-step check (no communication)."""
        return local(param.detach())

    def optimizer_state(self, model: nn.Module) -> dict:
        return optimizer_state(self.optimizer, model)

    def retarget(self, model: nn.Module, resolved) -> torch.optim.Optimizer:
        """Train another set of tensors from the next step on; returns the torch optimizer whose groups
        must follow (training/optimizer.py moves them)."""
        handler = self.accelerator.ddp_handler
        if self.accelerator.num_processes > 1 and not (handler and handler.find_unused_parameters):
            # DDP's reducer waits for the gradients of the set it wrapped; only a search for unused
            # ones follows a change
            raise FreezetuneError(
                "changing the trainable set under DDP needs the model wrapped with "
                "find_unused_parameters (make_accelerator(changing_set=True))"
            )
        apply_plan(model, resolved)
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def restore(
        self, model: nn.Module, tensors: dict[str, torch.Tensor], saved: dict, where: Path
    ) -> None:
        """Put a checkpoint's trained tensors into ``model`` and its optimizer state into the optimizer."""
        apply_trainable(model, tensors, where)
        load_optimizer_state(self.optimizer, model, saved, where)


class Fsdp(Replicated):
    """FSDP2 (sharding.py): each process holds a shard of every tensor, its gradient and moments."""

    gathers_everywhere = True
    writes_counted = False  # shards are gathered into and written through flat buffers

    def __init__(
        self, accelerator, settings: FsdpSettings, resolved, device: torch.device, bf16: bool
    ):
        super().__init__(accelerator)
        self.settings, self.resolved, self.device, self.bf16 = settings, resolved, device, bf16

    def wrap(self, model, make_optimizer):
        shard_model(model, self.resolved, self.settings, self.device, self.bf16)
        self.model, self.optimizer = model, make_optimizer(model)  # over the trainable shards
        return self.model, self.optimizer

    def retarget(self, model, resolved):
        raise FreezetuneError(
            "changing the trainable set during a run is not supported under FSDP yet"
        )

    def _clip(self, max_grad_norm: float) -> None:
        # torch's clipping reduces the norm over the shards; accelerate's would look for its own wrapper
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)


class Zero(Replicated):
    """DeepSpeed ZeRO: the optimizer state of the trainable tensors is partitioned (stage 1), and their
    gradients (stage 2), and all weights, frozen ones included (stage 3). DeepSpeed's engine
    reduces, clips and steps; the loop's own schedule still sets the learning rate."""

    gathers_everywhere = True
    writes_counted = False  # DeepSpeed writes partitions back through .data, which no counter sees

    def __init__(self, accelerator, settings: ZeroSettings, config, world: int, bf16: bool):
        super().__init__(accelerator)
        self.settings, self.config, self.world, self.bf16 = settings, config, world, bf16

    def wrap(self, model, make_optimizer):
        import deepspeed

        optimizer = make_optimizer(model)
        # before ZeRO flattens them
        self.groups = [[p for p in group["params"]] for group in optimizer.param_groups]
        ds_config = {
            "train_micro_batch_size_per_gpu": self.config.batch_size // self.world,
            "gradient_accumulation_steps": self.config.grad_accum,
            "gradient_clipping": self.config.max_grad_norm,
            "zero_optimization": {"stage": self.settings.stage},
            "zero_allow_untested_optimizer": True,  # torch's AdamW over the trainable tensors, as on every backend
            "bf16": {"enabled": self.bf16},
            "steps_per_print": 2**62,
        }
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
        self.client = optimizer
        return self.model, optimizer

    def backward(self, loss, last):
        # DeepSpeed divides by its gradient_accumulation_steps; the loss is already normalised over the step
        self.model.backward(loss * self.config.grad_accum)
        if not last:
            self.model.step()  # inside the accumulation: only counts the micro-step

    def retarget(self, model, resolved):
        raise FreezetuneError(
            "changing the trainable set during a run is not supported under DeepSpeed ZeRO yet"
        )

    def grad(self, param):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param) if param.requires_grad else param.grad

    def step(self, max_grad_norm):
        self.model.step()  # the boundary: reduce, clip (gradient_clipping), optimizer step, zero the gradients

    def value(self, param):
        """Trained tensors: ZeRO's fp32 master. Under stage 3 every read gathers: a collective."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        if param.requires_grad:
            return safe_get_full_fp32_param(param)
        if self.settings.stage < 3:
            return param.detach()
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()

    def view(self, param):
        """Stage 3 holds only a partition in ``param``: the check reads the gathered value (a collective)."""
        return self.value(param) if self.settings.stage == 3 else param.detach()

    def _named_groups(self, model) -> list[list[tuple[str, nn.Parameter]]]:
        names = {id(p): n for n, p in model.named_parameters()}
        return [[(names[id(p)], p) for p in group] for group in self.groups]

    def _link_state(self) -> None:
        """Point each parameter's view at the optimizer state of every group. DeepSpeed links them after
        stepping the first group only, so the later groups' views stay empty. (Stage 3 has no views.)"""
        if self.settings.stage < 3:
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()

    def optimizer_state(self, model):
        from deepspeed.utils import safe_get_full_optimizer_state

        step = next((s["step"] for s in self.client.state.values() if "step" in s), None)
        if step is not None:
            self._link_state()
        named, state = self._named_groups(model), {}
        for group in named if step is not None else []:  # no state before the first step
            for name, param in group:  # a collective per tensor, in the same order on every process
                state[name] = {
                    "step": step.clone(),
                    **{
                        k: safe_get_full_optimizer_state(param, k).cpu()
                        for k in ("exp_avg", "exp_avg_sq")
                    },
                }
        groups = [
            {**{k: v for k, v in live.items() if k != "params"}, "params": [n for n, _ in group]}
            for live, group in zip(self.client.param_groups, named)
        ]
        return {"state": state, "param_groups": groups}

    def restore(self, model, tensors, saved, where):
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        named = self._named_groups(model)
        check_same_groups(saved, [[n for n, _ in group] for group in named], where)
        params = dict(model.named_parameters())
        # stage 3: gather the working copies whole, write them, repartition them on leaving
        with deepspeed.zero.GatheredParameters(
            [params[n] for n in tensors], modifier_rank=0, enabled=self.settings.stage == 3
        ):
            apply_trainable(model, tensors, where)
        for group in named:
            for name, param in group:
                # ZeRO's master copy
                safe_set_full_fp32_param(param, tensors[name].to(param.device, torch.float32))
        if not saved["state"]:
            return
        step = next(iter(saved["state"].values()))["step"]
        stage3 = self.settings.stage == 3
        for flat in (
            self.optimizer.fp32_partitioned_groups_flat
            if stage3
            else self.optimizer.single_partition_of_fp32_groups
        ):
            # AdamW creates its state on the first step; a resumed run needs it before then
            self.client.state[flat] = {
                "step": step.clone(),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }
        self._link_state()
        for group in named:
            for name, param in group:
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(
                        param, saved["state"][name][key].to(param.device), key
                    )
        for live, old in zip(self.client.param_groups, saved["param_groups"]):
            live.update({k: v for k, v in old.items() if k != "params"})


def make_backend(accelerator, session, world: int) -> Replicated:
    bf16 = accelerator.mixed_precision == "bf16"
    if isinstance(session.sharding, FsdpSettings):
        return Fsdp(accelerator, session.sharding, session.resolved, accelerator.device, bf16)
    if isinstance(session.sharding, ZeroSettings):
        return Zero(accelerator, session.sharding, session.config, world, bf16)
    return Replicated(accelerator)
