"""Step time and peak memory of full fine-tuning vs `freeze bottom 75%`, through the step `train` runs.

    .venv/bin/python bench/step_time.py            # embedded SmolLM2-135M, batch 4, CPU
    .venv/bin/python bench/step_time.py --device cuda --precision bf16

Every path (bench/step_paths.py names them) times one optimizer step of freezetune's own
`TrainStep`: real SFT batches of the built-in dispatch task (chat template, loss on the
answers only, right padding) from the run's batch order, the token-exact loss, backward,
clipping at 1.0, AdamW over the trainable tensors, the LR schedule. As in `train`,
freezetune's paths run the output head on the target positions only (training/head.py).

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
from pathlib import Path

import torch
from step_paths import PATHS, Bench

from freezetune.runs.provenance import provenance
from freezetune.training.peak_memory import peak_memory_bytes


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM restarts at exec; ru_maxrss can carry the parent's peak over)."""
    return peak_memory_bytes(torch.device("cpu"))


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
