"""TrainConfig: every training option, typed, documented once (this is also `train --help`).

RunOptions holds the options a comparison shares with training; CompareOptions extends it too."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

from freezetune.config.fields import opt
from freezetune.plans.schedule import Schedule
from freezetune.plans.selectors import ADAPTERS_ONLY

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("off", "memory", "disk", "auto")
DEFAULT_PLAN = "freeze bottom 75%"
LORA_PLAN = ADAPTERS_ONLY  # with --lora-r and no --plan: the adapters alone


@dataclass
class RunOptions:
    """What every run of a model on data is given, whichever command starts it (train, compare)."""

    model: str = opt(
        "smollm2-135m",
        help="embedded model name, HF model folder, .gguf file, or a hub id in the local HF cache",
    )
    objective: str = opt(
        "sft",
        help="sft: prompt/response records, loss on responses; cpt: raw text, packed; dpo: "
        "prompt/chosen/rejected records, preference tuning",
        choices=("sft", "cpt", "dpo"),
    )
    data: str | None = opt(
        None,
        help="training data (.jsonl .json .csv .parquet .txt or a `datasets` folder); default: "
        "the built-in dispatch task (sft), its preference pairs (dpo) or stdlib docstrings (cpt)",
        once="a run reads one data file: join the files into one",
    )
    eval_data: str | None = opt(
        None,
        help="held-out data; default: the built-in task's held-out split, or 5%% of --data",
        once="a run reads one held-out file: join the files into one",
    )
    seq_len: int = opt(
        256, help="maximum tokens per example (SFT truncates, CPT packs to this length)"
    )
    batch_size: int = opt(8, help="examples per micro-batch (preference pairs, for dpo)")
    max_steps: int = opt(0, help="optimizer steps to run; 0 = run --epochs")
    warmup: int | None = opt(
        None,
        help="linear warmup steps before the cosine decay; default: --warmup-ratio of the steps",
    )
    warmup_ratio: float = opt(
        0.1, help="warmup as a fraction of the run's steps, when --warmup is not given"
    )
    seed: int = opt(0, help="seed for data order, initialisation and sampling")
    beta: float = opt(0.1, help="dpo: how far the policy may move from the reference (TRL's beta)")
    eval_generate: int = opt(
        40, help="held-out SFT examples to answer by greedy generation for exact match; 0 = none"
    )
    cache_dir: str | None = opt(
        None,
        help="where converted GGUF models and prefix caches live (default ~/.cache/freezetune)",
    )


@dataclass
class TrainConfig(RunOptions):
    """Fine-tune a model under a freeze plan (full fine-tuning is the plan 'train all')."""

    plan: str | None = opt(
        None,
        help="freeze plan text, or a .yaml/.json/.txt plan file (default 'freeze bottom 75%%'; "
        "with LoRA: train the adapters only; with --schedule: 'train all', every block to draw from)",
        once="one plan: join its rules with ';' (freeze all; train top 2)",
    )
    lora_r: int = opt(
        0, help="LoRA rank through peft; 0 = no LoRA (the plan then applies to the wrapped model)"
    )
    lora_alpha: int = opt(16, help="LoRA alpha")
    lora_targets: str = opt(
        "all-linear", help="LoRA target modules: 'all-linear' or comma-separated module names"
    )
    grad_accum: int = opt(1, help="micro-batches per optimizer step")
    precompute_ref: bool = opt(
        False,
        help="dpo: score every pair with the base model once before training and hold no "
        "reference weights (default: a copy of the trained tensors, above the shared frozen prefix)",
    )
    epochs: float = opt(2.0, help="passes over the training data when --max-steps is 0")
    lr: float = opt(2e-4, help="peak learning rate (AdamW)")
    layer_lr_decay: float = opt(
        1.0,
        help="layer-wise rate decay G: block i trains at lr*G^(top-i), the embeddings as "
        "block 0, the final norm and head as the top block; 1 = one rate for all",
    )
    schedule: str | None = opt(
        None,
        help="change what trains during the run, inside the plan: 'gradual every=N [start=K] "
        "[step=S]' (unfreeze downward) or 'lisa layers=K every=T [freeze-outside]' (K blocks "
        "drawn per period; freeze-outside: the embeddings and head stay frozen)",
    )
    weight_decay: float = opt(0.0, help="AdamW weight decay (not applied to biases and norms)")
    max_grad_norm: float = opt(1.0, help="gradient clipping norm; 0 = off")
    precision: str = opt(
        "auto", help="auto = bf16 on a GPU, fp32 on CPU; fp16 on a GPU only", choices=PRECISIONS
    )
    validation: int = opt(
        0,
        help="evaluate on N training examples carved out (seeded), not on the held-out split; 0 = off",
    )
    eval_every: int = opt(0, help="evaluate every N steps; 0 = only before and after training")
    save_every: int = opt(
        50, help="write a resumable checkpoint every N steps; 0 = only at the end"
    )
    gradient_checkpointing: bool = opt(
        False, help="recompute activations of the trained blocks only (never the frozen prefix)"
    )
    head_positions: str = opt(
        "targets",
        help="where the output head runs: targets (only where the loss is, its "
        "cross-entropy in chunks) or all (every position, as transformers does)",
        choices=("targets", "all"),
    )
    prefix_cache: str = opt(
        "auto",
        help="reuse the frozen prefix's output across epochs: off, memory, disk, or auto (by size)",
        choices=CACHE_MODES,
    )
    cache_ram: str = opt(
        "2GiB",
        help="RAM the prefix cache may hold; auto goes to disk above it, and a disk cache "
        "streams its shards within it",
    )
    cache_limit: str = opt(
        "50GiB",
        help="size cap of the prefix-cache folder: least recently used caches are removed "
        "before a run writes a new one",
    )
    resume: str | None = opt(None, help="continue the run in this folder from its last checkpoint")
    out: str | None = opt(None, help="run folder to write (default runs/<model>-<time>)")
    log_with: str | None = opt(
        None, help="also log to an accelerate tracker", choices=("tensorboard", "wandb")
    )
    show_generations: int = opt(3, help="generations to print before and after training")
    max_new_tokens: int = opt(48, help="token limit for generations")
    num_processes: int = opt(
        1, help="train with N processes (torchrun + DDP); --batch-size stays the global batch"
    )
    fsdp: bool = opt(
        False,
        help="shard parameters, gradients and optimizer state over the processes (FSDP2, one unit per block)",
    )
    zero_stage: int = opt(
        0,
        help="DeepSpeed ZeRO instead: 1 partitions the optimizer state, 2 also the gradients, "
        "3 also the weights; 0 = off",
        choices=(0, 1, 2, 3),
    )

    def validate(self) -> None:
        """Every value a run cannot take, refused in one line before anything loads (checks.py)."""
        from freezetune.config.checks import check_config

        check_config(self)

    def check_given(self, given: set[str]) -> None:
        """The options a user gave (typed, or in a config file) that this run would never read."""
        from freezetune.config.checks import check_given

        check_given(self, given, typed=True)

    def total_steps(self, num_train: int) -> int:
        """The run's optimizer steps: --max-steps, or --epochs of full batches (data/order.py)."""
        per_epoch = num_train // self.batch_size
        return self.max_steps or max(1, math.ceil(self.epochs * per_epoch / self.grad_accum))

    def unreached(self, total_steps: int) -> list[str]:
        """What was asked that a run of ``total_steps`` never gets to (said, not left to be noticed)."""
        notes, steps = [], f"{total_steps} step{'s' * (total_steps != 1)}"
        if self.warmup is not None and self.warmup >= total_steps:
            notes.append(
                f"--warmup {self.warmup} is not shorter than the run's {steps}: the rate "
                f"never reaches --lr {self.lr:g}"
            )
        if self.eval_every >= total_steps:
            notes.append(
                f"--eval-every {self.eval_every}: the run has {steps}, so it evaluates "
                "only before and after training"
            )
        return notes

    def reaches_second_epoch(self, num_train: int) -> bool:
        """Whether any training row comes round again (only then is caching its prefix output worth it)."""
        return self.total_steps(num_train) * self.grad_accum > num_train // self.batch_size

    def warmup_steps(self, total_steps: int) -> int:
        """--warmup when given, else --warmup-ratio of the run: 20 steps warm up for 2, not half the run."""
        return (
            self.warmup if self.warmup is not None else math.ceil(self.warmup_ratio * total_steps)
        )

    @functools.cached_property
    def parsed_schedule(self) -> Schedule | None:
        """--schedule parsed once per config: validation, the session, the loop and the cache choice share it."""
        return Schedule.parse(self.schedule) if self.schedule else None

    @property
    def plan_text(self) -> str:
        """The plan given, else the default: a schedule's universe is every block (as in LISA's paper:
        under 'freeze bottom 75%' it would draw from a handful of blocks, or from none at all)."""
        if self.plan:
            return self.plan
        return LORA_PLAN if self.lora_r else ("train all" if self.schedule else DEFAULT_PLAN)

    def to_dict(self) -> dict:
        return asdict(self)
