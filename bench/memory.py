"""Training memory, estimated (`plan --dtype`) against measured (`train --precision`), fp32 and bf16.

    .venv/bin/python bench/memory.py            # writes bench/results/memory.json

A Llama of about 0.6B parameters is built from a config (random weights, nothing downloaded)
and saved in bf16, as checkpoints of that size are. Four runs, `full` and `freeze bottom 75%`
in fp32 and bf16, each train 3 steps in a process of their own through `open_session` and
`TrainingLoop.run`, the calls `freezetune train` makes. Measured is the run's peak memory above
what its process held before the model loaded: peak RSS on a CPU, the allocator's peak on a
GPU. The estimate is the one `freezetune plan MODEL PLAN --dtype D` prints for the same
sequence length and batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from freezetune.runs.provenance import provenance

SHAPE = dict(
    hidden_size=1280,
    intermediate_size=3456,
    num_hidden_layers=24,
    num_attention_heads=20,
    num_key_value_heads=20,
    tie_word_embeddings=False,
)
STRATEGIES = {"full": "train all", "freeze bottom 75%": "freeze bottom 75%"}
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
SEQ_LEN, BATCH, STEPS = 128, 2, 3


def build(folder: Path) -> None:
    """The random model and a slice of the built-in task, saved where the runs read them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from freezetune import load_model
    from freezetune.data.tasks import dispatch_task

    tokenizer = load_model("smollm2-135m").tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, vocab_size=len(tokenizer)))
    model.to(torch.bfloat16).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    train, held = dispatch_task()
    for name, records in (("train", train[:16]), ("eval", held[:4])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r.fields) + "\n" for r in records))


def child(folder: Path, strategy: str, precision: str) -> dict:
    """One run in this process; its peak above the memory held before the model loaded."""
    from freezetune.config.run import TrainConfig
    from freezetune.plans.preview import describe
    from freezetune.training.loop import TrainingLoop
    from freezetune.training.peak_memory import current_rss_bytes
    from freezetune.training.session import open_session

    before = current_rss_bytes() if not torch.cuda.is_available() else 0
    config = TrainConfig(
        model=str(folder / "model"),
        data=str(folder / "train.jsonl"),
        eval_data=str(folder / "eval.jsonl"),
        out=str(folder / "runs" / f"{strategy}-{precision}".replace(" ", "-").replace("%", "")),
        plan=STRATEGIES[strategy],
        precision=precision,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        max_steps=STEPS,
        eval_generate=0,
        prefix_cache="off",
        save_every=0,
        show_generations=0,
    )
    session = open_session(config)
    estimate = describe(session.resolved, "llama", SEQ_LEN, BATCH, PRECISIONS[precision])[
        "memory_estimate_bytes"
    ]
    TrainingLoop(session, log=lambda message: None, progress=False).run()
    metrics = [
        json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()
    ]
    measured = max(r["peak_memory_bytes"] for r in metrics if "peak_memory_bytes" in r) - before
    dtypes = json.loads((Path(config.out) / "manifest.json").read_text())["dtypes"]
    return {
        "strategy": strategy,
        "precision": precision,
        "estimate_bytes": estimate["total"],
        "measured_bytes": measured,
        "estimate": estimate,
        "dtypes": dtypes,
        "params": session.resolved.total_params,
        "trainable_params": session.resolved.trainable_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    parser.add_argument(
        "--child", nargs=3, metavar=("FOLDER", "STRATEGY", "PRECISION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.child[2])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        for precision in PRECISIONS:
            for strategy in STRATEGIES:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", tmp, strategy, precision],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                row = {
                    "model": f"llama-{json.loads(out.strip().splitlines()[-1])['params'] / 1e9:.2f}B "
                    "(random, from a config)",
                    **json.loads(out.strip().splitlines()[-1]),
                }
                rows.append(row)
                print(
                    f"{row['strategy']:<20}{precision:<6}estimate {row['estimate_bytes'] / 2**30:6.2f} GiB   "
                    f"measured {row['measured_bytes'] / 2**30:6.2f} GiB   "
                    f"ratio {row['measured_bytes'] / row['estimate_bytes']:.2f}"
                )
    peak = {(r["strategy"], r["precision"]): r["measured_bytes"] for r in rows}
    result = {
        "provenance": provenance(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "steps": STEPS,
        "shape": SHAPE,
        "rows": rows,
        "ratios": {
            "bf16_over_fp32_freeze75": peak[("freeze bottom 75%", "bf16")]
            / peak[("freeze bottom 75%", "fp32")],
            "bf16_over_fp32_full": peak[("full", "bf16")] / peak[("full", "fp32")],
            "measured_over_estimate": [r["measured_bytes"] / r["estimate_bytes"] for r in rows],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
