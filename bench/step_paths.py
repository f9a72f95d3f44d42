"""The paths bench/step_time.py times, each one optimizer step of freezetune's own `TrainStep`
(training/step.py), the call `freezetune train` makes, on the same model and batches:

  full              train everything (plan "train all")
  freeze75          "freeze bottom 75%" through the prefix runner
  freeze75_gc       the same with gradient checkpointing of the trained blocks only
  freeze75_fill     the same with the prefix cache on, in epoch 1: every step fills it
  freeze75_cached   the same in later epochs: every step replays it (frozen blocks skipped)
  freeze75_cached_allhead   the same with the head on every position (--head-positions all)
  naive             what plain transformers does: requires_grad=False on the same tensors and
                    nothing else (the same TrainStep with no prefix runner)
  naive_gc          that plus model.gradient_checkpointing_enable(), which also calls
                    enable_input_require_grads() and so drags autograd through the frozen layers
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from freezetune import FreezePlan, apply_plan, find_anatomy, load_model, resolve
from freezetune.data.examples import pad_token_id, sft_examples
from freezetune.data.order import BatchOrder
from freezetune.data.tasks import dispatch_task
from freezetune.distributed.backends import Replicated
from freezetune.training.accelerator import make_accelerator
from freezetune.training.head import TargetHead
from freezetune.training.optimizer import build_lr_scheduler, build_optimizer
from freezetune.training.prefix import PrefixRunner
from freezetune.training.prefix_cache import PrefixCache
from freezetune.training.step import TrainStep, micro_batches

PATHS = [
    "full",
    "freeze75",
    "freeze75_gc",
    "freeze75_fill",
    "freeze75_cached",
    "freeze75_cached_allhead",
    "naive",
    "naive_gc",
]
CACHED = ("freeze75_fill", "freeze75_cached", "freeze75_cached_allhead")
PLAN = "freeze bottom 75%"
LR, MAX_GRAD_NORM = 1e-6, 1.0


RANDOM_SHAPES = {
    # TinyLlama-1.1B's shape with SmolLM2's vocabulary, random weights: a ~1B model without any download
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
}


def random_model(name: str, vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = RANDOM_SHAPES.get(name.removeprefix("random:"))
    if shape is None:
        raise SystemExit(
            f"unknown random model {name}; one of: {', '.join('random:' + k for k in RANDOM_SHAPES)}"
        )
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape, vocab_size=vocab_size))


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        embedded = load_model("smollm2-135m" if args.model.startswith("random:") else args.model)
        tokenizer = embedded.tokenizer
        model = (
            random_model(args.model, len(tokenizer))
            if args.model.startswith("random:")
            else embedded.model
        )
        self.model = model.to(self.device)
        self.anatomy = find_anatomy(self.model)
        train, _ = dispatch_task()
        self.examples = sft_examples(train, tokenizer, args.seq_len)
        self.order = BatchOrder(self.examples.units, args.batch_size, seed=0)
        self.pad_id = pad_token_id(tokenizer)
        self.accelerator = make_accelerator(
            "bf16" if args.precision == "bf16" else "fp32", None, Path(".")
        )
        self.plans = {
            "full": resolve(FreezePlan.parse("train all"), self.anatomy),
            "freeze": resolve(FreezePlan.parse(PLAN), self.anatomy),
        }
        self.steps: dict[str, TrainStep] = {}
        self.caches: dict[str, PrefixCache] = {}

    def _plan(self, path: str):
        return self.plans["full" if path == "full" else "freeze"]

    def _train_step(self, path: str) -> TrainStep:
        """The TrainStep `train` would build for this path: its plan, optimizer, schedule and runner."""
        if path not in self.steps:
            apply_plan(self.model, self._plan(path))
            runner = None
            if not path.startswith("naive"):
                cache = self.caches.setdefault(path, PrefixCache()) if path in CACHED else None
                runner = PrefixRunner(self.model, self._plan(path), path == "freeze75_gc", cache)
            # freezetune's paths project the targets only, as `train` does; plain transformers and `all` every position
            head = (
                None
                if path.startswith("naive") or path.endswith("allhead")
                else TargetHead(self.model)
            )
            backend = Replicated(self.accelerator)
            model, optimizer = backend.wrap(self.model, lambda m: build_optimizer(m, LR, 0.0))
            lr_scheduler = build_lr_scheduler(optimizer, warmup=0, total=10_000)
            self.steps[path] = TrainStep(
                model,
                backend,
                runner,
                lr_scheduler,
                self.accelerator,
                self.device,
                world=1,
                head=head,
            )
        return self.steps[path]

    def step(self, path: str, index: int) -> float:
        """One optimizer step of ``path`` on batch ``index``; returns its wall time in seconds."""
        train_step = self._train_step(path)
        apply_plan(self.model, self._plan(path))
        runner = train_step.runner
        if path == "freeze75_fill":
            self.caches[path].clear()  # epoch 1: nothing cached yet, the step fills it
        if train_step.head is not None:
            train_step.head.install()
        if runner is not None:
            runner.install().train_mode()
        else:
            self.model.train()
            if path == "naive_gc":
                # deprecated alias in transformers 5; it is what users call
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self.model.gradient_checkpointing_enable()
        try:
            micro = micro_batches(self.examples, self.order, index, 1, 0, 1, self.pad_id)
            if path in CACHED[1:] and not self.caches[path].has_all(micro[0].keys):
                # epoch 1 filled it
                with torch.no_grad(), runner.batch(micro[0].keys, micro[0].lengths):
                    self.model(
                        **{k: v.to(self.device) for k, v in micro[0].batch.items()}, use_cache=False
                    )
            self._sync()
            record = train_step(micro, MAX_GRAD_NORM)
            self._sync()
            return record["step_time_s"]
        finally:
            if train_step.head is not None:
                train_step.head.remove()
            if runner is not None:
                runner.remove()
            if path == "naive_gc":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self.model.gradient_checkpointing_disable()
                self.model.disable_input_require_grads()

    def target_fraction(self) -> float:
        """Share of the batches' positions the loss is on (what the masked head projects)."""
        rows = [
            micro_batches(self.examples, self.order, i, 1, 0, 1, self.pad_id)[0] for i in range(8)
        ]
        return sum(r.targets for r in rows) / sum(r.batch["input_ids"].numel() for r in rows)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
