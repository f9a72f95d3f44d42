"""The one training loop. Every strategy is a set of trainable tensors; this loop only sees that.

AdamW over trainable parameters only (frozen ones get no gradient and no optimizer state),
linear warmup then cosine decay, gradient accumulation and clipping, under ``accelerate``.
Whether the processes hold replicas, FSDP shards or ZeRO partitions is the backend's
business (distributed/backends.py); the loop reads the same way for all of them.
The data order (data/order.py) is a pure function of the step, so a resumed run sees exactly the
batches the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from freezetune.data.examples import pad_token_id
from freezetune.data.order import BatchOrder
from freezetune.distributed.backends import make_backend
from freezetune.distributed.processes import check_same_plan
from freezetune.distributed.state import trainable_state
from freezetune.errors import FreezetuneError
from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.schedule import trainable_blocks
from freezetune.runs.checkpoint import (
    checkpoint_dirs,
    intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_trainable,
    stage_rng,
)
from freezetune.runs.durable import remove_leftovers, write_json, write_text
from freezetune.runs.manifest import read_manifest, read_metrics, update_manifest
from freezetune.training.accelerator import make_accelerator, seed_everything
from freezetune.training.evaluation import evaluate_model
from freezetune.training.guards import FirstStepGuard
from freezetune.training.head import checked_head
from freezetune.training.optimizer import build_lr_scheduler, build_optimizer, retarget_optimizer
from freezetune.training.peak_memory import peak_memory_bytes, reset_peak_memory
from freezetune.training.prefix import PrefixRunner
from freezetune.training.session import Session
from freezetune.training.step import MicroBatch, NonFiniteLoss, TrainStep, micro_batches
from freezetune.training.trainable_set import TrainableSet


class TrainingLoop:
    def __init__(self, session: Session, log: Callable[[str], None] = print, progress: bool = True):
        self.session = session
        self.config = session.config
        self.accelerator = make_accelerator(
            self.config.precision,
            self.config.log_with,
            session.run_dir,
            changing_set=bool(self.config.schedule),
        )
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.log = log if self.main else (lambda message: None)  # one voice, not one per process
        self.progress = progress and self.main
        self.device = self.accelerator.device
        seed_everything(self.config.seed)
        self.model = session.loaded.model.to(self.device)
        self.tokenizer = session.loaded.tokenizer
        self.pad_id = pad_token_id(self.tokenizer)
        self.runner = PrefixRunner(
            self.model, session.resolved, self.config.gradient_checkpointing, session.cache
        ).install()
        if session.cache is not None:
            session.cache.warn = self.log  # damage found mid-run is said where the run's notes are
        # frozen weights may be bf16 beside fp32 trained ones: autocast pairs them
        with self.accelerator.autocast():
            self.runner.probe(self.device)
        # what trains now (the session's plan, or a phase of it); retarget() changes it
        self.resolved = session.resolved
        self.names = self.resolved.trainable_names()
        schedule = self.config.parsed_schedule
        # the optimizer is built over the whole plan, so a schedule's groups exist (empty or not) from step 0 on
        self.trainable = TrainableSet(session.resolved, schedule, self.config.seed)
        self.order = BatchOrder(
            len(session.train.examples), self.config.batch_size, self.config.seed
        )
        check_same_plan(self.accelerator, self.names)
        self.total_steps = self.config.total_steps(len(session.train.examples))
        self.backend = make_backend(self.accelerator, session, self.world)
        # the model itself, under whatever wrapper the backend puts around it
        self.module = self.model
        self.model, optimizer = self.backend.wrap(
            self.model,
            lambda model: build_optimizer(
                model, self.config.lr, self.config.weight_decay, self.config.layer_lr_decay
            ),
        )
        # the lr_scheduler stays unprepared: accelerate would step it once per process, but the global batch,
        # and so the schedule, does not depend on how many processes share it
        self.lr_scheduler = build_lr_scheduler(
            optimizer, self.config.warmup_steps(self.total_steps), self.total_steps
        )
        self.head, note = None, "head: every position (--head-positions all)"
        if self.config.head_positions == "targets":
            first = {k: v.to(self.device) for k, v in self.micro_batches(0)[0].batch.items()}
            self.head, note = checked_head(
                self.module,
                self.model,
                first,
                self.accelerator,
                sharded=self.backend.gathers_everywhere,
            )
        self.session.notes.append(note)
        self.train_step = TrainStep(
            self.model,
            self.backend,
            self.runner,
            self.lr_scheduler,
            self.accelerator,
            self.device,
            self.world,
            self.head,
        )
        self.trainable.advance(0, self.retarget)  # a schedule's first phase
        self.metrics_path = session.run_dir / "metrics.jsonl"
        self._metrics = None  # the open metrics file, while run() runs

    def evaluate(self, label: str) -> dict:
        # every process evaluates the whole set alike, so under FSDP their all-gathers pair up
        with self.accelerator.autocast():  # in the training precision, as the weights are stored
            return evaluate_model(
                self.module,
                self.tokenizer,
                self.session.eval.examples,
                self.config,
                self.device,
                self.runner,
                label,
                progress=self.progress,
                head=self.head,
            )

    def _resume(self) -> int:
        if self.main:  # one process checks the checksums and sets damaged checkpoints aside
            intact_checkpoint(self.session.run_dir, self.log)
        self.accelerator.wait_for_everyone()
        last = checkpoint_dirs(self.session.run_dir)[-1]
        state, tensors, optimizer = load_checkpoint(last, self.lr_scheduler, self.rank)
        step = state["step"]
        # the optimizer state saved is that of the set the last step trained; the loop moves on from there
        self.trainable.advance(max(step - 1, 0), self.retarget)
        self.trainable.take_check()  # the run was checked when it started
        self.trainable.add_trained(tensors)
        # a prefix trained before the kill is no longer the cached one
        self.runner.mark_trained(tensors)
        self.backend.restore(self.module, tensors, optimizer, last)
        # a killed run may have logged past its last checkpoint
        if self.main and self.metrics_path.exists():
            kept = [r for r in read_metrics(self.metrics_path, warn=self.log) if r["step"] <= step]
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self.log(
            f"resuming {self.session.run_dir} from {last.name} (step {step} of {self.total_steps})"
        )
        return step

    def _checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        """Written once, by the main process, with whole tensors. Under DDP every process holds the same
        state, so only the main one reads it; under FSDP and ZeRO all of them gather their pieces.
        Returns the trained tensors (on the main process)."""
        stage_rng(self.session.run_dir, step, self.rank)  # every process's own random state
        if self.session.cache is not None:
            # before the checkpoint is published: a run resumed from it finds every entry it had cached
            try:
                self.session.cache.save()  # each process keeps the cache of its own shard of the data
            except FreezetuneError as exc:
                done = checkpoint_dirs(self.session.run_dir)
                kept = (
                    f"the previous checkpoint {done[-1]} is kept; resume from it"
                    if done
                    else "no checkpoint was written yet"
                )
                raise FreezetuneError(f"step {step}: {exc}; {kept}") from None
        self.accelerator.wait_for_everyone()
        tensors = {}
        if self.main or self.backend.gathers_everywhere:
            tensors = trainable_state(self.module, self.trainable.trained_names, self.backend.value)
            optimizer = self.backend.optimizer_state(self.module)
        if self.main:
            # the metrics a checkpoint covers are on the disk before it is
            if self._metrics is not None:
                self._metrics.flush()
                os.fsync(self._metrics.fileno())
            try:
                save_checkpoint(
                    self.session.run_dir,
                    step,
                    tensors,
                    optimizer,
                    self.lr_scheduler,
                    {
                        "total_steps": self.total_steps,
                        "processes": self.world,
                        "backend": type(self.backend).__name__,
                        **self.trainable.state(),
                    },
                    self.world,
                )
            except (OSError, SafetensorError) as exc:
                done = checkpoint_dirs(self.session.run_dir)
                kept = (
                    f"the previous checkpoint {done[-1]} is kept"
                    if done
                    else "no earlier checkpoint exists"
                )
                raise FreezetuneError(
                    f"cannot write the checkpoint of step {step} in {self.session.run_dir / 'checkpoints'}: "
                    f"{getattr(exc, 'strerror', None) or str(exc).splitlines()[0]}; {kept}"
                ) from None
        self.accelerator.wait_for_everyone()
        return tensors

    def _stop_requested(self, should_stop: Callable[[], bool]) -> bool:
        """A signal may reach one process first; all of them must stop at the same step."""
        wanted = torch.tensor([float(should_stop())], device=self.device)
        return (
            bool(self.accelerator.reduce(wanted, "sum").item())
            if self.world > 1
            else bool(wanted.item())
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
            self._metrics = metrics if self.main else None
            while step < self.total_steps:
                if self._stop_requested(should_stop):
                    self._checkpoint(step)
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
                record = self._step(step, self._guard(self.trainable.take_check()))
                step += 1
                self._record(record, metrics, bar)
                self._when_due(step, metrics)
            bar.close()
            tensors = self._checkpoint(step)
            self._metrics = None
        return self._finish(step, before, tensors)

    def _start(self, before: dict | None) -> tuple[int, dict]:
        """The step to start from (a resumed run's checkpoint) and the evaluation before training."""
        config, run_dir = self.config, self.session.run_dir
        if self.main:  # what a killed writer of an earlier attempt left behind
            remove_leftovers(run_dir)
            remove_leftovers(run_dir / "checkpoints")
        for note in self.session.notes:
            self.log(note)
        start = self._resume() if config.resume else 0
        if before is None and config.resume:
            before = read_manifest(run_dir).get("eval_before")
        if before is None:
            before = self.evaluate("before")
            self._show(before)
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
            self._checkpoint(step)

    def _finish(self, step: int, before: dict, tensors: dict[str, torch.Tensor]) -> dict:
        """The trained tensors, the evaluation after, every item's record, the manifest marked finished."""
        run_dir = self.session.run_dir
        if self.main:
            save_trainable(tensors, run_dir / "trainable.safetensors")
        after = self.evaluate("after")
        self._show(after)
        answers, items = after.pop("answers", []), after.pop("items", [])
        if self.main:
            if answers:  # every answer behind the exact match, one per line, so that the score can be checked
                write_text(
                    run_dir / "generations.jsonl", "".join(json.dumps(a) + "\n" for a in answers)
                )
            # every held-out item's loss (and correctness): what a comparison's paired statistics are computed from
            write_text(run_dir / "eval-items.jsonl", "".join(json.dumps(i) + "\n" for i in items))
            write_json(run_dir / "eval.json", {"before": before, "after": after})
            self._update_manifest(
                status="finished", steps=step, trained_names=self.trainable.trained_names
            )
        self.accelerator.wait_for_everyone()
        if self.config.log_with:
            self.accelerator.end_training()
        return {
            "status": "finished",
            "step": step,
            "run_dir": str(run_dir),
            "before": before,
            "after": after,
        }

    def retarget(self, resolved: ResolvedPlan) -> torch.optim.Optimizer:
        """Change what trains, at a step boundary (TrainableSet.advance calls it when the set changes):
        requires_grad, the optimizer's groups, the prefix runner's depth."""
        optimizer = self.backend.retarget(self.module, resolved)
        retarget_optimizer(
            optimizer,
            self.lr_scheduler,
            self.module,
            self.config.weight_decay,
            self.config.layer_lr_decay,
        )
        self.runner.retarget(resolved)
        self.runner.train_mode()
        self.names, self.resolved = resolved.trainable_names(), resolved
        return optimizer

    def _guard(self, check: str | None) -> FirstStepGuard | None:
        """The first-step check ``TrainableSet.take_check`` asked for, over what trains now."""
        if check is None:
            return None
        return FirstStepGuard(
            self.module,
            set(self.names),
            self.backend.grad,
            self.backend.view,
            light=check == "light",
        )

    def micro_batches(self, step: int) -> list[MicroBatch]:
        return micro_batches(
            self.session.train.examples,
            self.order,
            step,
            self.config.grad_accum,
            self.rank,
            self.world,
            self.pad_id,
            cached=self.session.cache_train,
        )

    def _step(self, step: int, guard) -> dict:
        try:
            record = self.train_step(self.micro_batches(step), self.config.max_grad_norm, guard)
        except NonFiniteLoss as exc:
            done = checkpoint_dirs(self.session.run_dir)
            kept = (
                f"the last good checkpoint is {done[-1]}"
                if done
                else "no checkpoint was written yet"
            )
            raise FreezetuneError(f"step {step + 1}: {exc}; stopped ({kept})") from None
        return {
            "step": step + 1,
            **record,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "active_blocks": trainable_blocks(self.resolved),
        }

    def _show(self, result: dict) -> None:
        line = f"{result['label']}: eval loss {result['eval_loss']:.4f} (perplexity {result['eval_perplexity']:.2f})"
        if "exact_match" in result:
            line += f", exact match {100 * result['exact_match']:.1f}% of {result['exact_match_examples']}"
        self.log(line)
        for g in result.get("generations", []):
            first, *more = g["output"].splitlines() or [""]
            shown = first + (" …" if more else "")
            self.log(
                f"  prompt:    {g['prompt'].splitlines()[-1]}\n  expected:  {g['reference']}\n  generated: {shown}"
            )

    def _update_manifest(self, **fields) -> None:
        update_manifest(self.session.run_dir, **fields)
