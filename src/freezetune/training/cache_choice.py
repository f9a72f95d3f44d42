"""Whether a run caches its frozen prefix's output, where (memory or disk), and under which key.

A disk cache is shared by every run whose prefix computes the same outputs, so its key covers
everything that changes them; a schedule's phases cache only while their prefix is still the
base model's (training/prefix.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from freezetune.config.fields import parse_size
from freezetune.config.run import TrainConfig
from freezetune.distributed.processes import process_state
from freezetune.errors import FreezetuneError
from freezetune.models.loading import DEFAULT_CACHE_DIR, LoadedModel, file_sha256
from freezetune.plans.preview import human_bytes
from freezetune.plans.resolution import ResolvedPlan
from freezetune.runs.manifest import versions
from freezetune.training.cache_folder import evict
from freezetune.training.prefix import prefix_depth, prefix_touched
from freezetune.training.prefix_cache import DiskPrefixCache, PrefixCache


def _cache_key(
    base_sha256: str,
    resolved: ResolvedPlan,
    config: TrainConfig,
    train,
    held,
    dtype,
    model,
    model_path: Path,
) -> tuple[str, dict]:
    """Everything that changes block k-1's output: the weights, config.json (rope scaling, sliding window...),
    the attention implementation, the precision, the plan's prefix, the examples and the library versions."""
    config_json = Path(model_path) / "config.json"
    meta = {
        "base_model_sha256": base_sha256,
        "config_json_sha256": file_sha256(config_json) if config_json.is_file() else None,
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "precision": config.precision,
        "dtype": str(dtype),
        "plan": resolved.plan.render(),
        "prefix_depth": prefix_depth(resolved),
        "schedule": config.schedule,
        "seq_len": config.seq_len,
        "model": config.model,
        "versions": {k: v for k, v in versions().items() if k in ("torch", "transformers")},
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for example in train.examples + held.examples:
        digest.update(json.dumps(example.input_ids).encode())
    return digest.hexdigest()[:24], meta


def schedule_depths(
    config: TrainConfig, resolved: ResolvedPlan, num_train: int
) -> tuple[list[int], int]:
    """The frozen-prefix depths the run can cache at (0 means no prefix), and how many of a schedule's
    phases cannot: their prefix holds blocks an earlier phase trained, so its outputs are no longer the base's."""
    if not config.schedule:
        return [prefix_depth(resolved)], 0
    schedule = config.parsed_schedule
    # the draws are unknown until training: each lowest block one can have
    if schedule.sample == "gradient":
        blocks, k = schedule.check(resolved), schedule.layers
        lowest = [blocks[i : i + k] for i in range(len(blocks) - k + 1)]
        return sorted({prefix_depth(schedule.plan_for(resolved, draw)) for draw in lowest}), 0
    trained: set[str] = set()
    depths, stale = set(), 0
    for phase in schedule.phases(resolved, config.total_steps(num_train), config.seed):
        depth = prefix_depth(phase["resolved"])
        trained |= phase["resolved"].trainable
        if depth and prefix_touched(resolved.anatomy, trained, depth):
            stale += 1
        else:
            depths.add(depth)
    return sorted(depths), stale


def router_loss(model) -> bool:
    """Whether the model adds a load-balancing loss over every MoE layer's router to its loss."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "output_router_logits", False)) and bool(
        getattr(config, "router_aux_loss_coef", 1.0)
    )


def choose_cache(
    config: TrainConfig,
    resolved: ResolvedPlan,
    base_sha256: str,
    train,
    held,
    dtype,
    loaded: LoadedModel,
) -> tuple[PrefixCache | None, str]:
    usable, stale = schedule_depths(config, resolved, train.units)
    depths = [d for d in usable if d > 0]
    depth = max(depths, default=0)
    stale_note = (
        (
            f"; {stale} of the schedule's phases train below a frozen prefix they return to, and there the cache "
            "is neither read nor written (it would replay outputs of weights that have since trained)"
        )
        if stale
        else ""
    )
    if config.schedule and config.parsed_schedule.sample == "gradient":
        stale_note = (
            "; LISA's draws follow the gradients, so where a prefix comes to hold a block trained earlier "
            "its cache is neither read nor written from then on"
        )
    if config.prefix_cache == "off":
        return None, "prefix cache: off"
    if router_loss(loaded.model) and depth:
        return None, (
            "prefix cache: off (the model's load-balancing loss covers the routers of every MoE layer, "
            "and a replay would skip those of the frozen blocks; set output_router_logits false to cache)"
        )
    if depth == 0 and stale:
        return (
            None,
            "prefix cache: none (every frozen prefix the schedule reaches holds blocks it trained earlier)",
        )
    if depth == 0:
        return (
            None,
            "prefix cache: none (no frozen prefix: the backward pass reaches block 0 or the embeddings)",
        )
    state = process_state()
    # each process caches its own shard of the training data (data/order.py) and the whole held-out set;
    # a run that ends within one epoch never sees a training row twice, so it caches the held-out set only
    share = 1 / state.num_processes if config.reaches_second_epoch(train.units) else 0
    examples = int(len(train.examples) * share) + len(held.examples)
    tokens = int(train.num_tokens * share) + held.num_tokens
    # each depth a schedule visits keeps its own entries
    size = (
        tokens
        * resolved.anatomy.dims.hidden_size
        * torch.tensor([], dtype=dtype).element_size()
        * len(depths)
    )
    budget = parse_size(config.cache_ram, "--cache-ram")
    mode = config.prefix_cache
    if mode == "auto":
        mode = "memory" if size <= budget else "disk"
    limit = parse_size(config.cache_limit, "--cache-limit")
    # evicting every other cache would still leave this one past the cap the user set
    if mode == "disk" and size > limit:
        over = f"its {human_bytes(size)} of prefix outputs pass --cache-limit {config.cache_limit}"
        if config.prefix_cache == "disk":
            raise FreezetuneError(
                f"--prefix-cache disk: {over}; raise --cache-limit, or give --prefix-cache off"
            )
        return None, f"prefix cache: off ({over}; raise --cache-limit to cache on disk)"
    path, removed = None, []
    cache = PrefixCache()
    if mode == "disk":
        shard = (
            f"-rank{state.process_index}of{state.num_processes}" if state.num_processes > 1 else ""
        )
        root = (Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR) / "prefix"
        key, meta = _cache_key(
            base_sha256, resolved, config, train, held, dtype, loaded.model, loaded.path
        )
        path = root / f"{key}{shard}"
        removed = evict(root, limit - size, keep=path)
        # its notices join the run's notes
        cache = DiskPrefixCache(path, budget, meta, warn=lambda message: None)
    where = f"on disk at {path}" if path else "in memory"
    reused = " (reused from an earlier run)" if cache.loaded_from_disk else ""
    per = " per process" if state.num_processes > 1 else ""
    scored = "validation rows" if config.validation else "held-out set"  # what the run is scored on
    only = "" if share else f" (the {scored} only: the run ends within its first epoch)"
    blocks = (
        f"the {depth} frozen blocks"
        if len(depths) == 1
        else f"the frozen prefix at each of {len(depths)} depths"
    )
    evicted = (
        f"; removed {len(removed)} least recently used caches to stay under --cache-limit"
        if removed
        else ""
    )
    return cache, (
        f"prefix cache: {mode}, output of {blocks} for about {examples} example{'s' * (examples != 1)}"
        f"{per}{only}, "
        f"{size / 2**20:.1f} MiB {where}{reused}{evicted}{stale_note}"
    )
