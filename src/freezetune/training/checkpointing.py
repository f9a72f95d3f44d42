"""A training run's checkpoints, as the loop writes them and resumes from them.

Every process takes part (each stages its own random state; under FSDP and ZeRO each gathers its
pieces), one writes. A checkpoint is published only after the prefix cache and the metrics it
covers are on disk, so a run resumed from it finds everything it had. The files and their
checksums are runs/checkpoint.py's; this module knows what a loop puts in them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from freezetune.distributed.state import trainable_state
from freezetune.errors import FreezetuneError
from freezetune.runs.checkpoint import (
    checkpoint_dirs,
    intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stage_rng,
)
from freezetune.runs.durable import write_text
from freezetune.runs.manifest import read_metrics

if TYPE_CHECKING:
    from freezetune.training.loop import TrainingLoop


def last_checkpoint(
    run_dir: Path, present: str, absent: str = "no checkpoint was written yet"
) -> str:
    """What an error says about where to go on from: ``present`` names the last checkpoint ({})."""
    done = checkpoint_dirs(run_dir)
    return present.format(done[-1]) if done else absent


def resume(loop: TrainingLoop) -> int:
    """Load the run folder's last intact checkpoint into ``loop``; the step it continues from."""
    run_dir = loop.session.run_dir
    if loop.main:  # one process checks the checksums and sets damaged checkpoints aside
        intact_checkpoint(run_dir, loop.log)
    loop.accelerator.wait_for_everyone()
    last = checkpoint_dirs(run_dir)[-1]
    state, tensors, optimizer = load_checkpoint(last, loop.lr_scheduler, loop.rank)
    step = state["step"]
    loop.trainable.restore(state)  # a gradient-sampled LISA's scores and last draw
    if loop.reference is not None:  # DPO: the reference scores computed so far, or precomputed
        loop.reference.restore(state)
    # the optimizer state saved is that of the set the last step trained; the loop moves on from there
    loop.trainable.advance(max(step - 1, 0), loop.retarget)
    loop.trainable.take_check()  # the run was checked when it started
    loop.trainable.add_trained(tensors)
    # a prefix trained before the kill is no longer the cached one
    loop.runner.mark_trained(tensors)
    loop.backend.restore(loop.model, tensors, optimizer, last)
    # a killed run may have logged past its last checkpoint
    if loop.main and loop.metrics_path.exists():
        kept = [r for r in read_metrics(loop.metrics_path, warn=loop.log) if r["step"] <= step]
        write_text(loop.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    loop.log(f"resuming {run_dir} from {last.name} (step {step} of {loop.total_steps})")
    return step


def write_checkpoint(loop: TrainingLoop, step: int) -> dict[str, torch.Tensor]:
    """Written once, by the main process, with whole tensors. Under DDP every process holds the same
    state, so only the main one reads it; under FSDP and ZeRO all of them gather their pieces.
    Returns the trained tensors (on the main process)."""
    run_dir = loop.session.run_dir
    stage_rng(run_dir, step, loop.rank)  # every process's own random state
    if loop.session.cache is not None:
        # before the checkpoint is published: a run resumed from it finds every entry it had cached
        try:
            loop.session.cache.save()  # each process keeps the cache of its own shard of the data
        except FreezetuneError as exc:
            kept = last_checkpoint(run_dir, "the previous checkpoint {} is kept; resume from it")
            raise FreezetuneError(f"step {step}: {exc}; {kept}") from None
    loop.accelerator.wait_for_everyone()
    # every process's, gathered (a collective: all of them call it)
    scores = loop.reference.state(loop.accelerator) if loop.reference is not None else {}
    tensors = {}
    if loop.main or loop.backend.gathers_everywhere:
        tensors = trainable_state(loop.model, loop.trainable.trained_names, loop.backend.value)
        optimizer = loop.backend.optimizer_state(loop.model)
        # no step follows the last (a resume may not add steps): moments are dead
        if step >= loop.total_steps:
            optimizer = {**optimizer, "state": {}}
    if loop.main:
        # the metrics a checkpoint covers are on disk before it is
        if loop.metrics_file is not None:
            loop.metrics_file.flush()
            os.fsync(loop.metrics_file.fileno())
        state = {
            "total_steps": loop.total_steps,
            "processes": loop.world,
            "backend": type(loop.backend).__name__,
            **loop.trainable.state(),
            **scores,
        }
        try:
            save_checkpoint(run_dir, step, tensors, optimizer, loop.lr_scheduler, state, loop.world)
        except (OSError, SafetensorError) as exc:
            kept = last_checkpoint(
                run_dir, "the previous checkpoint {} is kept", "no earlier checkpoint exists"
            )
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise FreezetuneError(
                f"cannot write the checkpoint of step {step} in {run_dir / 'checkpoints'}: {reason}; {kept}"
            ) from None
    loop.accelerator.wait_for_everyone()
    return tensors
