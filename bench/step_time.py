"""Step time and peak memory of full fine-tuning vs `freeze bottom 75%`, through the step `train` runs.

    .venv/bin/python bench/step_time.py            # embedded SmolLM2-135M, batch 4, CPU
    .venv/bin/python bench/step_time.py --device cuda --precision bf16

Every path times one optimizer step of freezetune's own `TrainStep` (training/step.py), the
call `freezetune train` makes: real SFT batches of the built-in dispatch task (chat template,
loss on the answers only, right padding) from the run's batch order, the token-exact loss,
backward, clipping at 1.0, AdamW over the trainable tensors, the LR schedule. As in `train`,
freezetune's paths run the output head on the target positions only (training/head.py).

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

Timing: all paths live in one process and take turns, one step each per round on the same
batch, so machine noise hits them alike; the median per path is reported. Memory: on CUDA
the allocator's peak per path; on CPU each path runs alone in a child process and we report
its peak RSS above the RSS it had before loading the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from freezetune import FreezePlan, apply_plan, find_anatomy, load_model, resolve
from freezetune.data.examples import pad_token_id, sft_examples
from freezetune.data.order import BatchOrder
from freezetune.data.tasks import dispatch_task
from freezetune.distributed.backends import Replicated
from freezetune.runs.provenance import provenance
from freezetune.training.accelerator import make_accelerator
from freezetune.training.head import TargetHead
from freezetune.training.optimizer import build_lr_scheduler, build_optimizer
from freezetune.training.peak_memory import peak_memory_bytes
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


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM restarts at exec; ru_maxrss can carry the parent's peak over)."""
    return peak_memory_bytes(torch.device("cpu"))


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


def flop_ideals(anatomy, plan, target_fraction: float) -> dict:
    """Ideal ratios from FLOPs: forward 2N, backward 4N (input-grad 2N + weight-grad 2N) per token; freezetune's
    head projects ``target_fraction`` of the positions, plain transformers' (naive, allhead) all of them."""
    blocks = sum(e.numel for e in anatomy.entries if e.part == "block" and e.name == e.tensor)
    # a tied head still costs its matmul
    head = sum(e.numel for e in anatomy.entries if e.part == "head")
    trained_blocks = sum(
        e.numel for e in anatomy.entries if e.part == "block" and e.tensor in plan.trainable
    )
    head_trains = any(e.tensor in plan.trainable for e in anatomy.entries if e.part == "head")
    f = target_fraction
    full = 6 * blocks + 6 * head * f
    # forward, then input grad (+ weight grad)
    head_cost = 2 * head + (4 if head_trains else 2) * head
    freeze = 2 * blocks + head_cost * f + 4 * trained_blocks
    cached = 2 * trained_blocks + head_cost * f + 4 * trained_blocks
    cached_allhead = 2 * trained_blocks + head_cost + 4 * trained_blocks
    naive = 2 * blocks + head_cost + 4 * trained_blocks
    return {
        "full_over_freeze75": full / freeze,
        "full_over_freeze75_cached": full / cached,
        "naive_over_freeze75": naive / freeze,
        "head_masked_speedup": cached_allhead / cached,
        "pitfall_full_over_freeze75_autograd_leak": full / (freeze + 2 * (blocks - trained_blocks)),
    }


def measure_memory_cpu(args) -> dict:
    results = {}
    for path in PATHS:
        command = [
            sys.executable,
            __file__,
            "--only",
            path,
            "--model",
            args.model,
            "--seq-len",
            str(args.seq_len),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--precision",
            args.precision,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])["peak_memory_bytes"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="a model name or path, or random:llama-1b"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=256,
        help="the run's --seq-len (built-in task examples are shorter)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    # child process: one path, memory only
    parser.add_argument("--only", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    before_model = peak_rss_bytes()
    bench = Bench(args)
    # memory of one path alone (CPU): two steps, so optimizer state exists at the peak
    if args.only:
        for index in range(2):
            bench.step(args.only, index)
        print(json.dumps({"peak_memory_bytes": peak_rss_bytes() - before_model}))
        return

    for index in range(args.warmup):
        for path in PATHS:
            bench.step(path, index)
    times = {path: [] for path in PATHS}
    peaks = {}
    for index in range(args.warmup, args.warmup + args.steps):
        for path in PATHS:  # every path takes the same batch in a round
            if bench.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[path].append(bench.step(path, index))
            if bench.device.type == "cuda":
                peaks[path] = max(peaks.get(path, 0), torch.cuda.max_memory_allocated())
    if bench.device.type == "cpu":
        peaks = measure_memory_cpu(args)
    median = {path: statistics.median(values) for path, values in times.items()}
    ratios = {
        "full_over_freeze75": median["full"] / median["freeze75"],
        "full_over_freeze75_cached": median["full"] / median["freeze75_cached"],
        "freeze75_fill_over_freeze75": median["freeze75_fill"] / median["freeze75"],
        "naive_over_freeze75": median["naive"] / median["freeze75"],
        "freeze75_gc_over_freeze75": median["freeze75_gc"] / median["freeze75"],
        "head_masked_speedup": median["freeze75_cached_allhead"] / median["freeze75_cached"],
        "naive_gc_over_freeze75": median["naive_gc"] / median["freeze75"],
        "peak_mem_freeze75_over_full": peaks["freeze75"] / peaks["full"],
        "peak_mem_freeze75_gc_over_freeze75": peaks["freeze75_gc"] / peaks["freeze75"],
    }
    result = {
        "provenance": provenance(),
        "measured": "train_step",
        "model": args.model,
        "device": str(bench.device),
        "precision": args.precision,
        "data": "built-in dispatch task (SFT)",
        "target_fraction": bench.target_fraction(),
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "paths": {
            p: {"step_time_s": median[p], "step_times_s": times[p], "peak_memory_bytes": peaks[p]}
            for p in PATHS
        },
        "ratios": ratios,
        "ideal": flop_ideals(bench.anatomy, bench.plans["freeze"], bench.target_fraction()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'path':<24}{'step s':>9}{'vs freeze75':>13}{'peak MiB':>11}")
    for path in PATHS:
        print(
            f"{path:<24}{median[path]:>9.3f}{median[path] / median['freeze75']:>13.2f}{peaks[path] / 2**20:>11.0f}"
        )
    print()
    for name, value in ratios.items():
        ideal = result["ideal"].get(name)
        print(f"{name:<36}{value:>7.2f}" + (f"   (FLOP ideal {ideal:.2f})" if ideal else ""))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
