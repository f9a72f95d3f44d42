"""Everything a training run needs before its first step: model, plan, data, run folder, cache."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from freezetune.data.examples import (
    TokenizedData,
    cpt_examples,
    sft_examples,
    split_holdout,
)
from freezetune.data.files import read_records
from freezetune.data.tasks import dispatch_task, stdlib_docstrings
from freezetune.distributed.processes import process_state
from freezetune.distributed.sharding import FsdpSettings, ZeroSettings, check_sharding
from freezetune.errors import FreezetuneError
from freezetune.models.loading import (
    DEFAULT_CACHE_DIR,
    LoadedModel,
    file_sha256,
    load_model,
    require_causal_lm,
)
from freezetune.options.commands import parse_size
from freezetune.options.training import TrainConfig
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import ResolvedPlan, apply_plan, resolve
from freezetune.plans.schedule import Schedule
from freezetune.runs.checkpoint import checkpoint_dirs
from freezetune.runs.durable import write_json
from freezetune.runs.manifest import meaning_hashes, model_hash, read_manifest, versions
from freezetune.training.lora import wrap_lora
from freezetune.training.precision import (
    MIXED,
    store_in_training_precision,
    training_precision,
)
from freezetune.training.prefix import prefix_depth
from freezetune.training.prefix_cache import DiskPrefixCache, PrefixCache, evict

RESUME_MAY_CHANGE = {"resume", "out", "log_with", "show_generations", "cache_dir", "num_processes", "fsdp", "zero_stage",
                     "cache_ram", "cache_limit"}


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
    cache_train: bool = True  # False: the run ends within one epoch, so only the held-out rows are cached


def load_data(config: TrainConfig, tokenizer) -> tuple[TokenizedData, TokenizedData, list[str]]:
    """Train and eval examples; the built-in task or corpus when no data file is given."""
    tokenize = sft_examples if config.objective == "sft" else cpt_examples
    notes = []
    if config.data is None:
        if config.objective == "sft":
            train_records, eval_records = dispatch_task()
            notes.append(f"data: built-in dispatch task, {len(train_records)} train / {len(eval_records)} held-out")
        else:
            docs = stdlib_docstrings()
            train_records, eval_records = docs[: int(len(docs) * 0.95)], docs[int(len(docs) * 0.95):]
            notes.append(f"data: standard-library docstrings, {len(train_records)} train / {len(eval_records)} held-out documents")
        train, held = tokenize(train_records, tokenizer, config.seq_len), tokenize(eval_records, tokenizer, config.seq_len)
    else:
        train = tokenize(read_records(config.data), tokenizer, config.seq_len)
        if config.eval_data:
            held = tokenize(read_records(config.eval_data), tokenizer, config.seq_len)
        else:
            train, held = split_holdout(train, 0.05, config.seed)
            notes.append(f"eval: no --eval-data, holding out {len(held.examples)} examples of --data")
    notes += train.notes + held.notes
    if config.validation:  # score on a seeded slice of the training data; the held-out split stays unseen
        if config.validation >= len(train.examples):
            raise FreezetuneError(f"--validation {config.validation} leaves no training example "
                                  f"(the training data has {len(train.examples)})")
        train, held = split_holdout(train, 0.0, config.seed, count=config.validation)
        notes.append(f"eval: {len(held.examples)} training examples carved out as the validation split")
    if not held.examples:
        raise FreezetuneError("no evaluation example: give --eval-data or more --data")
    return train, held, notes


def _cache_key(base_sha256: str, resolved: ResolvedPlan, config: TrainConfig, train, held, dtype, model,
               model_path: Path) -> tuple[str, dict]:
    """Everything that changes block k-1's output: the weights, config.json (rope scaling, sliding window...),
    the attention implementation, the precision, the plan's prefix, the examples and the library versions."""
    config_json = Path(model_path) / "config.json"
    meta = {"base_model_sha256": base_sha256, "config_json_sha256": file_sha256(config_json) if config_json.is_file() else None,
            "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
            "precision": config.precision, "dtype": str(dtype), "plan": resolved.plan.render(),
            "prefix_depth": prefix_depth(resolved), "schedule": config.schedule, "seq_len": config.seq_len,
            "model": config.model, "versions": {k: v for k, v in versions().items() if k in ("torch", "transformers")}}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for example in train.examples + held.examples:
        digest.update(json.dumps(example.input_ids).encode())
    return digest.hexdigest()[:24], meta


def schedule_depths(config: TrainConfig, resolved: ResolvedPlan, num_train: int) -> list[int]:
    """The frozen-prefix depths the run trains at (one without a schedule); 0 means no prefix."""
    if not config.schedule:
        return [prefix_depth(resolved)]
    phases = Schedule.parse(config.schedule).phases(resolved, total_steps(config, num_train), config.seed)
    return sorted({prefix_depth(p["resolved"]) for p in phases})


def router_loss(model) -> bool:
    """Whether the model adds a load-balancing loss over every MoE layer's router to its loss."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "output_router_logits", False)) and bool(getattr(config, "router_aux_loss_coef", 1.0))


def choose_cache(config: TrainConfig, resolved: ResolvedPlan, base_sha256: str, train, held, dtype,
                 loaded: LoadedModel) -> tuple[PrefixCache | None, str]:
    depths = [d for d in schedule_depths(config, resolved, len(train.examples)) if d > 0]
    depth = max(depths, default=0)
    if config.prefix_cache == "off":
        return None, "prefix cache: off"
    if router_loss(loaded.model) and depth:
        return None, ("prefix cache: off (the model's load-balancing loss covers the routers of every MoE layer, "
                      "and a replay would skip those of the frozen blocks; set output_router_logits false to cache)")
    if depth == 0:
        return None, "prefix cache: none (no frozen prefix: the backward pass reaches block 0 or the embeddings)"
    state = process_state()
    # each process caches its own shard of the training data (data/order.py) and the whole held-out set;
    # a run that ends within one epoch never sees a training row twice, so it caches the held-out set only
    share = 1 / state.num_processes if reaches_second_epoch(config, len(train.examples)) else 0
    examples = int(len(train.examples) * share) + len(held.examples)
    tokens = int(train.num_tokens * share) + held.num_tokens
    # each depth a schedule visits keeps its own entries
    size = tokens * resolved.anatomy.dims.hidden_size * torch.tensor([], dtype=dtype).element_size() * len(depths)
    budget = parse_size(config.cache_ram, "--cache-ram")
    mode = config.prefix_cache
    if mode == "auto":
        mode = "memory" if size <= budget else "disk"
    path, removed = None, []
    cache = PrefixCache()
    if mode == "disk":
        shard = f"-rank{state.process_index}of{state.num_processes}" if state.num_processes > 1 else ""
        root = (Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR) / "prefix"
        key, meta = _cache_key(base_sha256, resolved, config, train, held, dtype, loaded.model, loaded.path)
        path = root / f"{key}{shard}"
        removed = evict(root, parse_size(config.cache_limit, "--cache-limit") - size, keep=path)
        cache = DiskPrefixCache(path, budget, meta)
    where = f"on disk at {path}" if path else "in memory"
    reused = " (reused from an earlier run)" if cache.loaded_from_disk else ""
    per = " per process" if state.num_processes > 1 else ""
    only = "" if share else " (the held-out set only: the run ends within its first epoch)"
    blocks = f"the {depth} frozen blocks" if len(depths) == 1 else f"the frozen prefix at each of {len(depths)} depths"
    evicted = f"; removed {len(removed)} least recently used caches to stay under --cache-limit" if removed else ""
    return cache, (f"prefix cache: {mode}, output of {blocks} for about {examples} examples{per}{only}, "
                   f"{size / 2**20:.1f} MiB {where}{reused}{evicted}")


def total_steps(config: TrainConfig, num_train: int) -> int:
    """The run's optimizer steps: --max-steps, or --epochs of full batches (data/order.py)."""
    per_epoch = num_train // config.batch_size
    return config.max_steps or max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


def reaches_second_epoch(config: TrainConfig, num_train: int) -> bool:
    """Whether any training row comes round again (only then is caching its prefix output worth it)."""
    return total_steps(config, num_train) * config.grad_accum > num_train // config.batch_size


def _run_dir(config: TrainConfig) -> Path:
    if config.resume:
        return Path(config.resume)
    if config.out:
        path = Path(config.out)
        if path.exists() and not path.is_dir():
            raise FreezetuneError(f"--out {path} is a file, not a folder")
        if (path / "manifest.json").exists():
            if checkpoint_dirs(path) or (path / "trainable.safetensors").exists():
                raise FreezetuneError(f"{path} already holds a run; pass --resume {path} to continue it, or choose another --out")
            # a run that stopped before its first checkpoint left nothing worth keeping: start it over
            (path / "metrics.jsonl").unlink(missing_ok=True)
        return path
    slug = Path(config.model).name.replace(".gguf", "")
    return Path("runs") / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def changed_setting(saved: dict, config: TrainConfig, keys) -> str | None:
    """The first of ``keys`` that would change a run's results and on which ``config`` differs from the
    run's saved config (a resume, or a comparison deciding whether a run can be reused)."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}  # a run saved before an option existed had its default
    return next((key for key in keys if key not in RESUME_MAY_CHANGE
                 and getattr(config, key) != saved.get(key, defaults.get(key))), None)


def resumed_config(config: TrainConfig, given: set[str]) -> TrainConfig:
    """The config of the run being resumed; a flag that would change its results is refused."""
    manifest = read_manifest(Path(config.resume))
    if not checkpoint_dirs(Path(config.resume)):
        raise FreezetuneError(f"--resume {config.resume}: the run holds no checkpoint to continue from")
    saved = dict(manifest["config"])
    key = changed_setting(saved, config, sorted(given))
    if key is not None:
        raise FreezetuneError(
            f"--{key.replace('_', '-')} {getattr(config, key)!r} differs from the resumed run's {saved.get(key)!r}; "
            "a resumed run keeps its config"
        )
    # where the run's disk cache lives stays the run's unless given again; the rest takes this invocation's values
    kept = {"cache_dir", "cache_ram", "cache_limit"} - given
    saved.update({key: getattr(config, key) for key in RESUME_MAY_CHANGE - kept})
    return TrainConfig(**saved)


def open_session(config: TrainConfig, dtype: torch.dtype = torch.float32,
                 sharding: FsdpSettings | ZeroSettings | None = None) -> Session:
    """``sharding``: FSDP or ZeRO instead of replicas (distributed.processes.launch_sharding reads it from a launch)."""
    config.validate()
    world = process_state().num_processes  # under torchrun / accelerate launch: the real process count
    if config.batch_size % world:
        raise FreezetuneError(f"--batch-size {config.batch_size} does not divide among {world} processes; "
                              "the global batch must split evenly")
    plan = FreezePlan.from_argument(config.plan_text)  # a typo in the plan fails before the model loads
    run_dir = _run_dir(config)
    # mixed precision loads the checkpoint as stored (a bf16 7B is 14 GB, not 28): trained tensors become fp32 below
    stored = "auto" if training_precision(config.precision) in MIXED else torch.float32
    loaded = load_model(config.model, cache_dir=Path(config.cache_dir) if config.cache_dir else None, dtype=stored)
    require_causal_lm(loaded, "train")
    base_sha256 = model_hash(loaded.path)
    if config.resume:
        manifest = read_manifest(run_dir)
        if manifest["base_model"]["sha256"] != base_sha256:
            raise FreezetuneError(f"--resume {run_dir}: the model {config.model} is not the base model this run started from")
    if config.lora_r:
        torch.manual_seed(config.seed)  # peft draws the A matrices at random: the seed must decide them, not earlier work
        loaded.model = wrap_lora(loaded.model, config.lora_r, config.lora_alpha, config.lora_targets)
    resolved = resolve(plan, find_anatomy(loaded.model))
    apply_plan(loaded.model, resolved)
    dtypes = store_in_training_precision(loaded.model, config.precision, sharded=sharding is not None)
    if sharding is not None:
        if config.schedule:
            raise FreezetuneError(f"--schedule under {type(sharding).__name__.replace('Settings', '')}: shards and partitions "
                                  "are laid out once for a fixed trainable set; train a schedule with replicas (DDP)")
        check_sharding(sharding, loaded.model, resolved, config.precision)
    schedule = Schedule.parse(config.schedule) if config.schedule else None
    if schedule is not None:
        schedule.check(resolved)  # a schedule the plan cannot hold fails before the run folder exists
    train, held, notes = load_data(config, loaded.tokenizer)
    if len(train.examples) < config.batch_size:  # epochs use full batches only
        raise FreezetuneError(f"{len(train.examples)} training examples are fewer than one batch (--batch-size {config.batch_size})")
    cache, cache_note = choose_cache(config, resolved, base_sha256, train, held, dtype, loaded)
    notes.append(cache_note)
    notes += [f"notice: {n}" for n in resolved.notices]
    if not config.resume:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FreezetuneError(f"cannot create the run folder {run_dir}: {exc.strerror}") from None
        write_json(run_dir / "manifest.json", {
            "status": "running",
            "base_model": {"name": config.model, "path": str(loaded.path), "sha256": base_sha256,
                           "files": meaning_hashes(loaded.path), "class": type(loaded.model).__name__},
            "plan": resolved.plan.to_list(),
            "trainable_names": resolved.trainable_names(),
            "schedule": schedule.render() if schedule else None,
            "trainable_params": resolved.trainable_params,
            "total_params": resolved.total_params,
            "config": config.to_dict(),
            "versions": versions(),
            "dtypes": dtypes,
        })
    over = f"{world} processes" if world > 1 else "1 process"
    if isinstance(sharding, FsdpSettings):
        notes.append(f"sharding: FSDP2 over {over}, one unit per block of {resolved.anatomy.num_layers}")
    elif isinstance(sharding, ZeroSettings):
        shared = {1: "the trained tensors' optimizer state", 2: "the trained tensors' optimizer state and gradients",
                  3: "the trained tensors' optimizer state and gradients, and all weights"}[sharding.stage]
        notes.append(f"sharding: DeepSpeed ZeRO-{sharding.stage} over {over}, partitioning {shared}")
    return Session(config, loaded, base_sha256, resolved, train, held, run_dir, cache, notes, sharding,
                   reaches_second_epoch(config, len(train.examples)))
