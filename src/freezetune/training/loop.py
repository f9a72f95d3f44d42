"""The one training loop. Every strategy is a set of trainable tensors; this loop only sees that.

AdamW over trainable parameters only (frozen ones get no gradient and no optimizer state),
linear warmup then cosine decay, gradient accumulation and clipping, under ``accelerate``.
Whether the processes hold replicas, FSDP shards or ZeRO partitions is the backend's business
(distributed/backends.py). The data order (data/order.py) is a pure function of the step, so a
resumed run sees exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from freezetune.data.examples import pad_token_id
from freezetune.data.order import BatchOrder
from freezetune.distributed.backends import make_backend
from freezetune.distributed.processes import check_same_plan, stop_agreed
from freezetune.errors import FreezetuneError
from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.schedule import trainable_blocks
from freezetune.runs.checkpoint import save_trainable
from freezetune.runs.durable import remove_leftovers
from freezetune.runs.manifest import read_manifest, update_manifest
from freezetune.training.accelerator import make_accelerator, seed_everything
from freezetune.training.checkpointing import last_checkpoint, resume, write_checkpoint
from freezetune.training.evaluation import describe_evaluation, evaluate_model, write_evaluations
from freezetune.training.guards import first_step_guard
from freezetune.training.head import checked_head
from freezetune.training.optimizer import build_lr_scheduler, build_optimizer, retarget_optimizer
from freezetune.training.peak_memory import peak_memory_bytes, reset_peak_memory
from freezetune.training.preference import (
    describe_preferences,
    evaluate_preferences,
    make_reference,
    make_step,
    precompute_for,
)
from freezetune.training.prefix import PrefixRunner
from freezetune.training.session import Session
from freezetune.training.step import MicroBatch, NonFiniteLoss, micro_batches
from freezetune.training.trainable_set import TrainableSet


class TrainingLoop:
    def __init__(self, session: Session, log: Callable[[str], None] = print, progress: bool = True):
        self.session = session
        self.config = config = session.config
        self.accelerator = accelerator = make_accelerator(
            config.precision, config.log_with, session.run_dir, changing_set=bool(config.schedule)
        )
        self.main = accelerator.is_main_process
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.log = log if self.main else (lambda message: None)  # one voice, not one per process
        self.progress = progress and self.main
        self.device = accelerator.device
        seed_everything(config.seed)
        self.model = session.loaded.model.to(self.device)
        self.tokenizer = session.loaded.tokenizer
        self.pad_id = pad_token_id(self.tokenizer)
        self.runner = PrefixRunner(
            self.model, session.resolved, config.gradient_checkpointing, session.cache
        ).install()
        if session.cache is not None:
            session.cache.warn = self.log  # damage found mid-run is said where the run's notes are
        # frozen bf16 weights beside fp32 trained ones: autocast pairs them
        with accelerator.autocast():
            self.runner.probe(self.device)
        # what trains now (the session's plan, or a phase of it); retarget() changes it
        self.resolved = session.resolved
        # the optimizer is built over the whole plan, so a schedule's groups exist (empty or not) from step 0 on
        self.trainable = TrainableSet(session.resolved, config.parsed_schedule, config.seed)
        self.order = BatchOrder(session.train.units, config.batch_size, config.seed)
        check_same_plan(accelerator, self.trainable.applied)
        self.total_steps = config.total_steps(session.train.units)
        # DPO's reference: taken now, while every weight is the base model's (a resume moves them later)
        self.reference = make_reference(self.model, session.resolved, config)
        self.backend = make_backend(accelerator, session, self.world)
        # the backend's wrapper around the model (DDP's, or the model itself): what the step calls
        self.wrapped, optimizer = self.backend.wrap(
            self.model,
            lambda model: build_optimizer(
                model, config.lr, config.weight_decay, config.layer_lr_decay
            ),
        )
        # the LR scheduler stays unprepared: accelerate would step it once per process, but the global
        # batch, and so the rate curve, does not depend on how many processes share it
        warmup = config.warmup_steps(self.total_steps)
        self.lr_scheduler = build_lr_scheduler(optimizer, warmup, self.total_steps)
        self.head, note = None, "head: every position (--head-positions all)"
        if config.head_positions == "targets":
            first = {k: v.to(self.device) for k, v in self.micro_batches(0)[0].batch.items()}
            sharded = self.backend.gathers_everywhere
            self.head, note = checked_head(
                self.model, self.wrapped, first, accelerator, sharded=sharded
            )
        self.notes = [*session.notes, note]  # said when the run starts; the session stays as opened
        step_parts = (self.wrapped, self.backend, self.runner, self.lr_scheduler, accelerator)
        step_parts += (self.device, self.world, self.head)
        self.train_step = make_step(step_parts, self.reference, config.beta)
        self.notes += [self.reference.describe()] if self.reference else []
        self.trainable.advance(0, self.retarget)  # a schedule's first phase
        self.metrics_path = session.run_dir / "metrics.jsonl"
        self.metrics_file = None  # open while run() runs: a checkpoint flushes it

    def evaluate(self, label: str) -> dict:
        # every process evaluates the whole set alike, so under FSDP their all-gathers pair up
        with self.accelerator.autocast():  # in the training precision, as the weights are stored
            if self.reference is not None:
                return evaluate_preferences(self, label)
            return evaluate_model(
                self.model,
                self.tokenizer,
                self.session.eval.examples,
                self.config,
                self.device,
                self.runner,
                label,
                progress=self.progress,
                head=self.head,
            )

    def run(
        self, should_stop: Callable[[], bool] = lambda: False, before: dict | None = None
    ) -> dict:
        """Train to the end (or until ``should_stop``). ``before``: the base model's evaluation when the
        caller already has it (a comparison evaluates the base once for all its runs). The run folder's
        lock is let go when it returns, however it returns."""
        try:
            return self._run(should_stop, before)
        finally:
            if self.session.lock is not None:
                self.session.lock.release()

    def _run(self, should_stop: Callable[[], bool], before: dict | None) -> dict:
        """The recipe: start (resume, the evaluation before); then each step: what trains now, one
        TrainStep, its record, an evaluation and a checkpoint when due; then the trained tensors and the
        evaluation after."""
        start, before = self._start(before)
        reset_peak_memory(self.device)
        self.runner.train_mode()
        bar = tqdm(
            total=self.total_steps,
            initial=start,
            desc="train",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        step = start
        # the bar is closed before any error is printed, so the message gets a line of its own
        with bar, open(self.metrics_path if self.main else os.devnull, "a") as metrics:
            self.metrics_file = metrics if self.main else None
            while step < self.total_steps:
                if stop_agreed(self.accelerator, should_stop()):
                    write_checkpoint(self, step)
                    bar.close()
                    self.log(
                        f"stopped at step {step}; continue with --resume {self.session.run_dir}"
                    )
                    return {
                        "status": "interrupted",
                        "step": step,
                        "run_dir": str(self.session.run_dir),
                    }
                self.trainable.advance(step, self.retarget)
                record = self._step(step, first_step_guard(self, self.trainable.take_check()))
                step += 1
                self._record(record, metrics, bar)
                self._when_due(step, metrics)
            bar.close()
            tensors = write_checkpoint(self, step)
            self.metrics_file = None
        return self._finish(step, before, tensors)

    def _start(self, before: dict | None) -> tuple[int, dict]:
        """The step to start from (a resumed run's checkpoint) and the evaluation before training."""
        config, run_dir = self.config, self.session.run_dir
        if self.main:  # what a killed writer of an earlier attempt left behind
            remove_leftovers(run_dir)
            remove_leftovers(run_dir / "checkpoints")
        for note in self.notes:
            self.log(note)
        if config.precompute_ref and not config.resume:  # the model is the base one until resume()
            precompute_for(self)
        start = resume(self) if config.resume else 0
        if before is None and config.resume:
            before = read_manifest(run_dir).get("eval_before")
        if before is None:
            before = self.evaluate("before")
            self.log(self.describe(before))
        # the run keeps its own only
        before = {k: v for k, v in before.items() if k not in ("answers", "items")}
        if self.main:
            self._update_manifest(eval_before=before)
        if config.log_with:
            self.accelerator.init_trackers(
                "freezetune", config={k: v for k, v in config.to_dict().items() if v is not None}
            )
        return start, before

    def _record(self, record: dict, metrics, bar) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if self.config.log_with:
            self.accelerator.log(
                {k: v for k, v in record.items() if k != "step"}, step=record["step"]
            )
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")

    def _when_due(self, step: int, metrics) -> None:
        """--eval-every and --save-every, after ``step`` steps (the last step's are the run's end)."""
        config = self.config
        if config.eval_every and step % config.eval_every == 0 and step < self.total_steps:
            result = self.evaluate(f"step {step}")
            metrics.write(
                json.dumps(
                    {"step": step, **{k: v for k, v in result.items() if k.startswith("eval_")}}
                )
                + "\n"
            )
            self.runner.train_mode()
        if config.save_every and step % config.save_every == 0 and step < self.total_steps:
            write_checkpoint(self, step)

    def _finish(self, step: int, before: dict, tensors: dict[str, torch.Tensor]) -> dict:
        """The trained tensors, the evaluation after, every item's record, the manifest marked finished."""
        run_dir = self.session.run_dir
        if self.main:
            save_trainable(tensors, run_dir / "trainable.safetensors")
        after = self.evaluate("after")
        try:  # a disk cache keeps the rows' prefix outputs for the next run of the plan: a seed, a rate
            if self.session.cache is not None:
                self.session.cache.save()
        except FreezetuneError as exc:  # the run is saved: only a later run's shortcut is lost
            self.log(f"warning: {exc}; a later run computes those rows again")
        self.log(self.describe(after))
        if self.main:
            write_evaluations(run_dir, before, after)
            self._update_manifest(
                status="finished", steps=step, trained_names=self.trainable.trained_names
            )
        self.accelerator.wait_for_everyone()
        if self.config.log_with:
            self.accelerator.end_training()
        done = {"status": "finished", "step": step, "run_dir": str(run_dir), "before": before}
        return {**done, "after": {k: v for k, v in after.items() if k not in ("answers", "items")}}

    def retarget(self, resolved: ResolvedPlan) -> torch.optim.Optimizer:
        """Change what trains, at a step boundary (TrainableSet.advance calls it when the set changes):
        requires_grad, the optimizer's groups, the prefix runner's depth."""
        optimizer = self.backend.retarget(self.model, resolved)
        retarget_optimizer(
            optimizer,
            self.lr_scheduler,
            self.model,
            self.config.weight_decay,
            self.config.layer_lr_decay,
        )
        self.runner.retarget(resolved)
        self.runner.train_mode()
        # what the first-step check and run()'s step boundary take it to train, whoever called
        self.resolved, self.trainable.applied = resolved, resolved.trainable_names()
        return optimizer

    def micro_batches(self, step: int) -> list[MicroBatch]:
        return micro_batches(
            self.session.train,
            self.order,
            step,
            self.config.grad_accum,
            self.rank,
            self.world,
            self.pad_id,
            cached=self.session.cache_train,
        )

    def _step(self, step: int, guard) -> dict:
        micro, observe = self.micro_batches(step), self.trainable.observer(self.model)
        try:
            record = self.train_step(micro, self.config.max_grad_norm, guard, observe)
        except NonFiniteLoss as exc:
            kept = last_checkpoint(self.session.run_dir, "the last good checkpoint is {}")
            raise FreezetuneError(f"step {step + 1}: {exc}; stopped ({kept})") from None
        return {
            "step": step + 1,
            **record,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "active_blocks": trainable_blocks(self.resolved),
        }

    def describe(self, result: dict) -> str:
        return (describe_preferences if self.reference else describe_evaluation)(result)

    def _update_manifest(self, **fields) -> None:
        update_manifest(self.session.run_dir, **fields)
