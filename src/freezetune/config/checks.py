"""What a TrainConfig may not be: each value a run cannot take, refused in one line (what, and
the rule) before a model loads; and what its processes must allow (check_layout), checked again
in each process under a launcher's own settings."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from freezetune.config.fields import (
    check_choices,
    check_finite,
    check_not_blank,
    check_seed,
    flag_of,
    parse_size,
)
from freezetune.errors import FreezetuneError

if TYPE_CHECKING:
    from freezetune.config.run import TrainConfig
    from freezetune.plans.resolution import ResolvedPlan

NON_NEGATIVE = (  # counts, then floats a negative value turns around (clipping below 0 flips gradients)
    *("max_steps", "validation", "eval_every", "save_every", "eval_generate", "show_generations"),
    *("max_grad_norm", "weight_decay"),
)


def check_config(config: TrainConfig) -> None:
    check_choices(config)  # TrainConfig(objective="rl") was a KeyError deep in the session
    check_finite(config)
    check_not_blank(config)  # TrainConfig(data=os.environ.get("DATA", "")) is no default either
    if config.seq_len < 2:  # before the data: a shorter limit would blame the records
        raise FreezetuneError(
            f"--seq-len must be at least 2 (a next-token loss needs two tokens), got {config.seq_len}"
        )
    for name in ("batch_size", "grad_accum", "num_processes"):
        if getattr(config, name) < 1:
            raise FreezetuneError(
                f"{flag_of(name)} must be at least 1, got {getattr(config, name)}"
            )
    for name in NON_NEGATIVE:
        if getattr(config, name) < 0:
            raise FreezetuneError(f"{flag_of(name)} must be 0 or more, got {getattr(config, name)}")
    # a library caller gave what it set away from the defaults; the CLI knows what was typed
    check_given(
        config, {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}
    )
    if config.beta <= 0:
        raise FreezetuneError(f"--beta must be positive, got {config.beta}")
    check_seed(config.seed)
    if config.objective == "dpo" and (config.fsdp or config.zero_stage):
        raise FreezetuneError(
            "--objective dpo runs with one process or DDP replicas; its reference is not sharded yet"
        )
    if config.fsdp and config.zero_stage:
        raise FreezetuneError("--fsdp and --zero-stage are two ways of sharding; choose one")
    if config.max_steps == 0 and config.epochs <= 0:
        raise FreezetuneError("give --max-steps or a positive --epochs")
    if config.lora_r < 0:
        raise FreezetuneError(f"--lora-r must be 0 (no LoRA) or a rank, got {config.lora_r}")
    # alpha scales the adapters' output: 0 would train nothing, a negative one flips them
    if config.lora_alpha <= 0:
        raise FreezetuneError(f"--lora-alpha must be positive, got {config.lora_alpha}")
    if config.max_new_tokens < 1:
        raise FreezetuneError(f"--max-new-tokens must be at least 1, got {config.max_new_tokens}")
    # accelerate runs no fp16 autocast on a CPU: fp16 frozen weights would meet fp32 activations
    # (sharded runs refuse fp16 anywhere, with their own reason)
    if config.precision == "fp16" and not (config.fsdp or config.zero_stage):
        import torch

        if not torch.cuda.is_available():
            raise FreezetuneError(
                "--precision fp16 needs a GPU (a CPU has no fp16 autocast): use bf16 or fp32"
            )
    if config.warmup is not None and config.warmup < 0:
        raise FreezetuneError(f"--warmup must be 0 or more, got {config.warmup}")
    if not 0 <= config.warmup_ratio < 1:
        raise FreezetuneError(f"--warmup-ratio must be in [0, 1), got {config.warmup_ratio}")
    if config.lr <= 0:
        raise FreezetuneError(f"--lr must be positive, got {config.lr}")
    if not 0 < config.layer_lr_decay <= 1:
        raise FreezetuneError(f"--layer-lr-decay must be in (0, 1], got {config.layer_lr_decay}")
    parse_size(config.cache_ram, "--cache-ram")
    parse_size(config.cache_limit, "--cache-limit")
    _ = config.parsed_schedule  # its syntax fails here, before anything loads
    check_layout(
        config,
        config.num_processes,
        "--fsdp" if config.fsdp else "--zero-stage" if config.zero_stage else None,
    )
    if config.log_with:
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[
            config.log_with
        ]()
        # accelerate would drop the tracker with a log line; the user asked for it
        if not available:
            raise FreezetuneError(
                f"--log-with {config.log_with} needs the {config.log_with} package: "
                f"pip install {config.log_with}"
            )


def check_given(config: TrainConfig, given: set[str], typed: bool = False) -> None:
    """Options given that the run would never read: of a mode it is not in, or set beside the
    option that decides in their place. Either way the user asked for something that changes nothing.
    ``typed``: ``given`` is what a user typed, not what a caller set away from the defaults (compare
    sets generation options for search runs that generate nothing, on purpose)."""
    for needs, on, names in (
        (
            "--objective dpo, which has a reference model",
            config.objective == "dpo",
            ("precompute_ref", "beta"),
        ),
        ("LoRA: give --lora-r N", config.lora_r > 0, ("lora_alpha", "lora_targets")),
        (
            "the prefix cache, which --prefix-cache off turns off",
            config.prefix_cache != "off",
            ("cache_ram", "cache_limit"),
        ),
        (  # a memory cache is neither bounded by --cache-ram nor kept in the folder
            "a cache that may go to disk (--prefix-cache auto or disk); --prefix-cache memory "
            "keeps every entry in memory",
            config.prefix_cache != "memory",
            ("cache_ram", "cache_limit"),
        ),
    ):
        for name in names:
            if not on and name in given:
                raise FreezetuneError(f"{flag_of(name)} is for {needs}")
    for name, decides, why in (
        ("epochs", config.max_steps > 0, f"--max-steps {config.max_steps} sets the run's length"),
        ("warmup_ratio", config.warmup is not None, f"--warmup {config.warmup} sets the warmup"),
    ):
        if name in given and decides:
            raise FreezetuneError(
                f"{flag_of(name)} {getattr(config, name):g} has no effect: {why}; "
                "give one of the two"
            )
    if typed:
        _check_generation(config, given)


def _check_generation(config: TrainConfig, given: set[str]) -> None:
    """Generation options typed for a run that answers nothing: only SFT answers, and only N > 0."""
    if config.objective != "sft":
        why = f"--objective {config.objective} generates none"
    elif config.eval_generate == 0:
        why = "--eval-generate 0 generates none"
    else:
        return
    # 0 asks for no answers, so it is never the contradiction
    for name, asks in (
        ("eval_generate", config.eval_generate > 0),
        ("show_generations", config.show_generations > 0),
        ("max_new_tokens", True),
    ):
        if name in given and asks:
            raise FreezetuneError(f"{flag_of(name)} is for generated answers, and {why}")


def check_plan_fit(config: TrainConfig, resolved: ResolvedPlan) -> None:
    """Options the resolved plan leaves nothing to act on (the whole plan: a schedule's phases are
    inside it)."""
    # the runner checkpoints the blocks the backward pass runs through (training/prefix.py)
    if config.gradient_checkpointing and resolved.backward_depth == 0:
        raise FreezetuneError(
            "--gradient-checkpointing recomputes the blocks the backward pass runs through, and "
            "this plan trains no block or embedding, so it runs through none"
        )


def check_layout(config: TrainConfig, processes: int, sharding: str | None) -> None:
    """What the processes must allow: checked from the flags before freezetune starts them, and again in
    each process under a launcher's own settings (torchrun, an accelerate config)."""
    if config.batch_size % processes:
        raise FreezetuneError(
            f"--batch-size {config.batch_size} does not divide among {processes} processes; "
            "the global batch must split evenly"
        )
    if config.schedule and sharding:
        raise FreezetuneError(
            f"--schedule with {sharding}: the shards and partitions are laid out once for a fixed "
            "trainable set; train a schedule with replicas (DDP) or one process"
        )
