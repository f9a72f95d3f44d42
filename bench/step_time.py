"""Step time and peak memory of full fine-tuning vs `freeze bottom 75%`, measured side by side.

    .venv/bin/python bench/step_time.py            # embedded SmolLM2-135M, seq 256, batch 4, CPU
    .venv/bin/python bench/step_time.py --device cuda --precision bf16

Paths (one optimizer step each: forward, backward, AdamW):
  full                 train everything (freezetune's engine path, plan "train all")
  freeze75             "freeze bottom 75%" through the prefix runner
  freeze75_gc          the same with gradient checkpointing of the trained blocks only
  freeze75_cached      the same with the prefix cache warm (frozen blocks skipped)
  naive                plain transformers: requires_grad=False on the same tensors
  naive_gc             that plus model.gradient_checkpointing_enable(), which also calls
                       enable_input_require_grads() and so drags autograd through the frozen layers

Timing: all paths live in one process and take turns, one step each per round, so machine
noise hits them alike; the median per path is reported. Memory: on CUDA the allocator's peak
per path; on CPU each path runs alone in a child process and we report its peak RSS above
the RSS it had before loading the model (weights, gradients, optimizer state, activations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from freezetune import FreezePlan, apply_plan, find_anatomy, load_model, resolve
from freezetune.memory import peak_memory_bytes
from freezetune.prefix import PrefixCache, PrefixRunner

PATHS = ["full", "freeze75", "freeze75_gc", "freeze75_cached", "naive", "naive_gc"]
PLAN = "freeze bottom 75%"


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM restarts at exec; ru_maxrss can carry the parent's peak over)."""
    return peak_memory_bytes(torch.device("cpu"))


RANDOM_SHAPES = {
    # TinyLlama-1.1B's shape, random weights: a ~1B model without any download
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
}


def random_model(name: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = RANDOM_SHAPES.get(name.removeprefix("random:"))
    if shape is None:
        raise SystemExit(f"unknown random model {name}; one of: {', '.join('random:' + k for k in RANDOM_SHAPES)}")
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape))


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        self.model = (random_model(args.model) if args.model.startswith("random:") else load_model(args.model).model).to(self.device)
        self.anatomy = find_anatomy(self.model)
        vocab = self.anatomy.dims.vocab_size
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator).to(self.device)
        self.batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
        self.keys = [f"b{i}" for i in range(args.batch_size)]
        self.plans = {
            "full": resolve(FreezePlan.parse("train all"), self.anatomy),
            "freeze": resolve(FreezePlan.parse(PLAN), self.anatomy),
        }
        self.optimizers = {}
        self.cache = PrefixCache()
        self.runners = {}

    def _optimizer(self, path: str, plan: str):
        if path not in self.optimizers:
            apply_plan(self.model, self.plans[plan])
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers[path] = torch.optim.AdamW(params, lr=1e-6)
        return self.optimizers[path]

    def step(self, path: str) -> float:
        """One optimizer step on ``path``; returns its wall time in seconds."""
        plan = "full" if path == "full" else "freeze"
        optimizer = self._optimizer(path, plan)
        apply_plan(self.model, self.plans[plan])
        runner, keys = None, None
        if not path.startswith("naive"):
            cache = self.cache if path == "freeze75_cached" else None
            if path not in self.runners:  # one runner per path: it remembers the blocks' output form
                self.runners[path] = PrefixRunner(self.model, self.plans[plan], path == "freeze75_gc", cache)
            runner = self.runners[path].install()
            runner.train_mode()
            keys = self.keys if cache is not None else None
        else:
            self.model.train()
            if path == "naive_gc":
                with warnings.catch_warnings():  # deprecated alias in transformers 5; it is what users call
                    warnings.simplefilter("ignore", FutureWarning)
                    self.model.gradient_checkpointing_enable()
        try:
            self._sync()
            started = time.perf_counter()
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                if runner is not None:
                    with runner.batch(keys, [self.args.seq_len] * self.args.batch_size):
                        loss = self.model(**self.batch).loss
                else:
                    loss = self.model(**self.batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self._sync()
            return time.perf_counter() - started
        finally:
            if runner is not None:
                runner.remove()
            if path == "naive_gc":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self.model.gradient_checkpointing_disable()
                self.model.disable_input_require_grads()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def flop_ideals(anatomy, plan) -> dict:
    """Ideal ratios from FLOPs: forward 2N, backward 4N (input-grad 2N + weight-grad 2N) per token."""
    blocks = sum(e.numel for e in anatomy.entries if e.part == "block" and e.name == e.tensor)
    head = sum(e.numel for e in anatomy.entries if e.part == "head")  # a tied head still costs its matmul
    trained_blocks = sum(e.numel for e in anatomy.entries if e.part == "block" and e.tensor in plan.trainable)
    head_trains = any(e.tensor in plan.trainable for e in anatomy.entries if e.part == "head")
    full = 6 * (blocks + head)
    head_cost = 2 * head + (4 if head_trains else 2) * head  # forward, then input grad (+ weight grad)
    freeze = 2 * blocks + head_cost + 4 * trained_blocks
    cached = 2 * trained_blocks + head_cost + 4 * trained_blocks
    return {"full_over_freeze75": full / freeze, "full_over_freeze75_cached": full / cached,
            "naive_over_freeze75": 1.0, "pitfall_full_over_freeze75_autograd_leak": full / (freeze + 2 * (blocks - trained_blocks))}


def measure_memory_cpu(args) -> dict:
    results = {}
    for path in PATHS:
        command = [sys.executable, __file__, "--only", path, "--model", args.model, "--seq-len", str(args.seq_len),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])["peak_memory_bytes"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model name or path, or random:llama-1b")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    parser.add_argument("--only", choices=PATHS, help=argparse.SUPPRESS)  # child process: one path, memory only
    args = parser.parse_args()

    before_model = peak_rss_bytes()
    bench = Bench(args)
    if args.only:  # memory of one path alone (CPU): two steps, so optimizer state exists at the peak
        for _ in range(2 + (args.only == "freeze75_cached")):
            bench.step(args.only)
        print(json.dumps({"peak_memory_bytes": peak_rss_bytes() - before_model}))
        return

    for _ in range(args.warmup):
        for path in PATHS:
            bench.step(path)
    times = {path: [] for path in PATHS}
    peaks = {}
    for _ in range(args.steps):
        for path in PATHS:
            if bench.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[path].append(bench.step(path))
            if bench.device.type == "cuda":
                peaks[path] = max(peaks.get(path, 0), torch.cuda.max_memory_allocated())
    if bench.device.type == "cpu":
        peaks = measure_memory_cpu(args)
    median = {path: statistics.median(values) for path, values in times.items()}
    ratios = {
        "full_over_freeze75": median["full"] / median["freeze75"],
        "full_over_freeze75_cached": median["full"] / median["freeze75_cached"],
        "naive_over_freeze75": median["naive"] / median["freeze75"],
        "freeze75_gc_over_freeze75": median["freeze75_gc"] / median["freeze75"],
        "naive_gc_over_freeze75": median["naive_gc"] / median["freeze75"],
        "peak_mem_freeze75_over_full": peaks["freeze75"] / peaks["full"],
        "peak_mem_freeze75_gc_over_freeze75": peaks["freeze75_gc"] / peaks["freeze75"],
    }
    result = {
        "model": args.model, "device": str(bench.device), "precision": args.precision, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "steps": args.steps, "threads": torch.get_num_threads(),
        "paths": {p: {"step_time_s": median[p], "step_times_s": times[p], "peak_memory_bytes": peaks[p]} for p in PATHS},
        "ratios": ratios,
        "ideal": flop_ideals(bench.anatomy, bench.plans["freeze"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'path':<18}{'step s':>9}{'vs freeze75':>13}{'peak MiB':>11}")
    for path in PATHS:
        print(f"{path:<18}{median[path]:>9.3f}{median[path] / median['freeze75']:>13.2f}{peaks[path] / 2**20:>11.0f}")
    print()
    for name, value in ratios.items():
        ideal = result["ideal"].get(name)
        print(f"{name:<36}{value:>7.2f}" + (f"   (FLOP ideal {ideal:.2f})" if ideal else ""))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
