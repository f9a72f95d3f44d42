"""TRL's SFTTrainer with 22 of 30 blocks frozen by hand, against the same script with `freeze()` added.

    .venv/bin/python bench/integration.py       # writes bench/results/integration.json

Both trainers run the same SFTConfig, whose defaults turn gradient checkpointing on, on the
embedded SmolLM2-135M and the standard library's docstrings packed into rows of 256 tokens,
batch 4 (the setting of the measurement that opened the issue). "by hand" sets
requires_grad=False on the embeddings (and so the head tied to them) and blocks 0-21, as users
do; the other trainer adds one line, `freeze(model, "freeze bottom 22")`, which freezes the same
tensors. Steps are interleaved: each round runs a few
steps of one trainer, then of the other, so machine noise hits both alike; each round's first
step (set-up) is left out and the median step time per trainer is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from freezetune.runs.provenance import provenance

PLAN, FROZEN = "freeze bottom 22", 22


def main() -> None:
    # the timer bench/peers.py's drivers use: both benches bracket a Trainer step the same way
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    from datasets import Dataset
    from hf_job import StepTimer
    from trl import SFTConfig, SFTTrainer

    from freezetune import load_model
    from freezetune.data.tasks import stdlib_docstrings
    from freezetune.hf import freeze

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=3, help="steps per trainer per round (the first is set-up)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "integration.json")
    )
    args = parser.parse_args()

    rows = [{"text": record.fields["text"]} for record in stdlib_docstrings()[:400]]
    trainers, timers = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("trl_default", "freeze"):
            loaded = load_model("smollm2-135m")
            model = loaded.model
            # the hand-frozen script both start from
            for param_name, param in model.named_parameters():
                block = param_name.split(".")[2] if param_name.startswith("model.layers.") else None
                param.requires_grad_(
                    not (
                        param_name.startswith("model.embed_tokens")
                        or (block is not None and int(block) < FROZEN)
                    )
                )
            if name == "freeze":
                freeze(model, PLAN)  # the one line
            config = SFTConfig(
                output_dir=str(Path(tmp) / name),
                max_steps=args.steps,
                per_device_train_batch_size=4,
                learning_rate=1e-5,
                logging_steps=10**6,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                max_length=256,
                packing=True,
                dataloader_num_workers=0,
                disable_tqdm=True,
            )
            timers[name] = StepTimer()
            trainers[name] = SFTTrainer(
                model=model,
                args=config,
                train_dataset=Dataset.from_list(rows),
                processing_class=loaded.tokenizer,
                callbacks=[timers[name]],
            )
        checkpointing = trainers["trl_default"].args.gradient_checkpointing
        times = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                timers[name].times.clear()
                trainer.train()
                times[name] += timers[name].times[1:]
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "provenance": provenance(),
        "measured": "SFTTrainer.train steps",
        "model": "smollm2-135m",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "data": "stdlib docstrings, packed to 256 tokens",
        "batch_size": 4,
        "max_length": 256,
        "gradient_checkpointing": checkpointing,
        "frozen": f"embeddings + blocks 0-{FROZEN - 1}",
        "plan": PLAN,
        "steps": {
            name: {"step_time_s": median[name], "step_times_s": values}
            for name, values in times.items()
        },
        "ratios": {"trl_default_over_freeze": median["trl_default"] / median["freeze"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name in times:
        print(f"{name:<12} median step {median[name]:.2f} s over {len(times[name])} steps")
    print(
        f"trl_default_over_freeze {result['ratios']['trl_default_over_freeze']:.2f}\nwrote {args.out}"
    )


if __name__ == "__main__":
    main()
