"""Everything a training run needs before its first step: model, plan, data, run folder, cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from freezetune.config.checks import check_layout, check_plan_fit
from freezetune.config.run import TrainConfig
from freezetune.data.examples import TokenizedData
from freezetune.data.loading import load_data
from freezetune.distributed.processes import process_state
from freezetune.distributed.sharding import FsdpSettings, ZeroSettings, check_sharding
from freezetune.errors import FreezetuneError
from freezetune.models.loading import LoadedModel, load_model, require_causal_lm
from freezetune.models.positions import check_seq_len
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import ResolvedPlan, apply_plan, resolve
from freezetune.runs.checkpoint import check_new_run_folder
from freezetune.runs.durable import write_json
from freezetune.runs.lock import FolderLock, lock_folder
from freezetune.runs.manifest import absolute, meaning_hashes, model_hash, read_manifest, versions
from freezetune.training.answers import answer_notices, check_answers_fit
from freezetune.training.cache_choice import choose_cache
from freezetune.training.lora import wrap_lora
from freezetune.training.optimizer import check_layer_decay
from freezetune.training.precision import MIXED, store_in_training_precision, training_precision
from freezetune.training.prefix_cache import PrefixCache
from freezetune.training.resume import check_resumable, data_hashes


@dataclass
class Session:
    config: TrainConfig
    loaded: LoadedModel
    base_sha256: str
    resolved: ResolvedPlan
    train: TokenizedData
    eval: TokenizedData
    run_dir: Path
    cache: PrefixCache | None
    notes: list[str]
    sharding: FsdpSettings | ZeroSettings | None = None
    # False: the run ends within one epoch, so only the held-out rows are cached
    cache_train: bool = True
    # the run folder, held by this process (the main one) until the run ends
    lock: FolderLock | None = None
    # seconds of each part of opening it: model, hash, plan, data, cache
    startup_s: dict = field(default_factory=dict)


def _run_dir(config: TrainConfig) -> Path:
    if config.resume:
        return Path(config.resume)
    if config.out:
        check_new_run_folder(Path(config.out))
        return Path(config.out)
    slug = Path(config.model).name.replace(".gguf", "")
    return Path("runs") / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_data(tokenizer, config: TrainConfig, validation: int | None = None):
    """(train, held, notes): what a run of ``config`` trains on and is scored on; ``validation``:
    carve that many training examples instead (a rate search's split)."""
    carved = config.validation if validation is None else validation
    return load_data(
        tokenizer, config.objective, config.data, config.eval_data, config.seq_len, carved
    )


def check_batches(train, config: TrainConfig) -> None:
    """A batch, and an optimizer step's batches, within the training data (epochs use full batches)."""
    what = "pairs" if train.paired else "examples"
    if train.units < config.batch_size:
        raise FreezetuneError(
            f"{train.units} training {what} are fewer than one batch (--batch-size {config.batch_size})"
        )
    batches = train.units // config.batch_size
    if config.grad_accum > batches:  # a step's batches then repeat examples; a huge one never ended
        raise FreezetuneError(
            f"--grad-accum {config.grad_accum}: one optimizer step takes {config.grad_accum} batches, "
            f"and {train.units} training {what} make {batches} of {config.batch_size}, so a step "
            f"would see an example twice; give --grad-accum {batches} or less"
        )


def open_session(
    config: TrainConfig,
    dtype: torch.dtype = torch.float32,
    sharding: FsdpSettings | ZeroSettings | None = None,
) -> Session:
    """``sharding``: FSDP or ZeRO instead of replicas (distributed.processes.launch_sharding reads it from a launch)."""
    config.validate()
    seconds, last = {}, [time.perf_counter()]

    def lap(phase: str) -> None:  # where the time before the first step goes: the manifest keeps it
        now = time.perf_counter()
        seconds[phase] = round(now - last[0], 3)
        last[0] = now

    # under torchrun / accelerate launch: the real process count
    world = process_state().num_processes
    check_layout(
        config,
        world,
        type(sharding).__name__.replace("Settings", "") if sharding is not None else None,
    )
    # a typo in the plan fails before the model loads
    plan = FreezePlan.from_argument(config.plan_text)
    run_dir = _run_dir(config)
    main_process = process_state().is_main_process
    lock = lock_folder(run_dir, "training run") if config.resume and main_process else None
    # mixed precision loads the checkpoint as stored (a bf16 7B is 14 GB, not 28): trained tensors become fp32 below
    stored = "auto" if training_precision(config.precision) in MIXED else torch.float32
    loaded = load_model(
        config.model, cache_dir=Path(config.cache_dir) if config.cache_dir else None, dtype=stored
    )
    require_causal_lm(loaded, "train")
    past_positions = check_seq_len(loaded.model, config.seq_len, config.model)
    lap("model")
    base_sha256 = model_hash(loaded.path, config.cache_dir)
    lap("hash")
    if config.resume:
        check_resumable(read_manifest(run_dir), run_dir, config, base_sha256, loaded.path)
    if config.lora_r:
        # peft draws the A matrices at random: the seed must decide them, not earlier work
        torch.manual_seed(config.seed)
        loaded.model = wrap_lora(
            loaded.model, config.lora_r, config.lora_alpha, config.lora_targets
        )
    resolved = resolve(plan, find_anatomy(loaded.model))
    apply_plan(loaded.model, resolved)
    check_layer_decay(loaded.model, config.layer_lr_decay)
    check_plan_fit(config, resolved)
    dtypes = store_in_training_precision(
        loaded.model, config.precision, sharded=sharding is not None
    )
    if sharding is not None:
        check_sharding(sharding, loaded.model, resolved, config.precision)
    schedule = config.parsed_schedule
    if schedule is not None:
        # a schedule the plan cannot hold fails before the run folder exists
        schedule.check(resolved)
    lap("plan")
    train, held, notes = run_data(loaded.tokenizer, config)
    # the answers the evaluation generates, within a learned position table: before the run folder
    check_answers_fit(loaded.model, held.examples, config)
    notes += [f"notice: {n}" for n in answer_notices(held.examples, loaded.tokenizer, config)]
    check_batches(train, config)
    total_steps = config.total_steps(train.units)
    left = train.units % config.batch_size
    if left and total_steps * config.grad_accum >= train.units // config.batch_size:
        notes.append(  # data/order.py: full batches only, so an epoch's remainder waits for another
            f"batches: {train.units} training {'pairs' if train.paired else 'examples'} in batches of "
            f"{config.batch_size} leave {left} out of each epoch (drawn anew each epoch)"
        )
    unreached = config.unreached(total_steps)
    if schedule is not None:
        unreached.append(schedule.check_length(resolved, total_steps))
    notes += [f"notice: {note}" for note in unreached if note]
    lap("data")
    cache, cache_note = choose_cache(config, resolved, base_sha256, train, held, dtype, loaded)
    lap("cache")
    notes += [cache_note, *(cache.notices if cache is not None else [])]
    notes += [f"notice: {n}" for n in resolved.notices] + [past_positions] * bool(past_positions)
    if not config.resume and not main_process:
        # the main process writes the manifest; the others only their shards
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not config.resume:
        lock = lock_folder(run_dir, "training run")  # before anything in it is touched
        _run_dir(config)  # again, now that no other process can be writing there
        # a run that stopped before its first checkpoint left nothing worth keeping: start it over
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        write_json(
            run_dir / "manifest.json",
            {
                "status": "running",
                "base_model": {
                    "name": config.model,
                    "path": str(loaded.path),
                    "sha256": base_sha256,
                    "files": meaning_hashes(loaded.path),
                    "class": type(loaded.model).__name__,
                },
                "plan": resolved.plan.to_list(),
                "trainable_names": resolved.trainable_names(),
                "schedule": schedule.render() if schedule else None,
                "trainable_params": resolved.trainable_params,
                "total_params": resolved.total_params,
                "config": config.to_dict(),
                "data_sha256": data_hashes(config),
                # a relative --model or --data, as a later resume or export elsewhere finds it
                "paths": {k: absolute(getattr(config, k)) for k in ("model", "data", "eval_data")},
                "versions": versions(),
                "dtypes": dtypes,
                "startup_s": seconds,
            },
        )
    over = f"{world} processes" if world > 1 else "1 process"
    if isinstance(sharding, FsdpSettings):
        notes.append(
            f"sharding: FSDP2 over {over}, one unit per block of {resolved.anatomy.num_layers}"
        )
    elif isinstance(sharding, ZeroSettings):
        shared = {
            1: "the trained tensors' optimizer state",
            2: "the trained tensors' optimizer state and gradients",
            3: "the trained tensors' optimizer state and gradients, and all weights",
        }[sharding.stage]
        notes.append(
            f"sharding: DeepSpeed ZeRO-{sharding.stage} over {over}, partitioning {shared}"
        )
    notes += [lock.notice] if lock is not None and lock.notice else []
    notes.append(
        "start-up: " + ", ".join(f"{phase} {value:.1f} s" for phase, value in seconds.items())
    )
    return Session(
        config,
        loaded,
        base_sha256,
        resolved,
        train,
        held,
        run_dir,
        cache,
        notes,
        sharding,
        config.reaches_second_epoch(train.units),
        lock,
        seconds,
    )
