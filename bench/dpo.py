"""DPO's memory and step time: freezetune's freeze, full and LoRA against TRL's DPOTrainer, blocks frozen by hand.

    .venv/bin/python bench/dpo.py            # writes bench/results/dpo.json

Each run trains a few steps of DPO on the built-in preference task (the dispatch line over a near
miss), batch 4 pairs, fp32, in a process of its own, so that its peak memory is its own: peak RSS
above what the process held before the model loaded. Runs go in rounds, the order reversed every
round, and a run's step time is the median of its steps after the first (set-up).

- freezetune `freeze bottom 75%`: the reference shares the frozen prefix and holds a copy of the
  trained tensors only (training/dpo.py); `train all` holds a full copy; LoRA a copy of the adapters.
- TRL `DPOTrainer` with the same tensors frozen by hand (requires_grad=False on the embeddings and
  the bottom blocks, as users do): TRL then makes its reference a full copy of the model. Run with
  gradient checkpointing off, as freezetune runs, and with TRL's default (on).

Two models: the embedded SmolLM2-135M, and a Llama of about 0.3B built from a config (random
weights). Every run starts from the same weights and the same conversational records, which both
tools render with the chat template to the same token ids (checked: `same_token_ids`). The step
covers the reference's forward, the policy's forward and backward, and AdamW.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from freezetune.runs.provenance import provenance

LARGER = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    tie_word_embeddings=True,
)
RUNS = ("freeze", "full", "lora", "trl_freeze", "trl_freeze_checkpointing")
PAIRS, BATCH, SEQ_LEN, LR = 64, 4, 256, 1e-5


def build(folder: Path, model: str) -> None:
    """The model (for `larger`: random from LARGER), and the preference records the runs read."""
    from freezetune import load_model
    from freezetune.data.preferences import preference_task

    loaded = load_model("smollm2-135m")
    if model == "larger":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**LARGER, vocab_size=len(loaded.tokenizer))).save_pretrained(
            folder / "model"
        )
    else:
        loaded.model.save_pretrained(folder / "model")
    loaded.tokenizer.save_pretrained(folder / "model")
    train, held = preference_task(PAIRS, 4)
    for name, records in (("train", train), ("eval", held)):
        rows = [json.dumps(conversational(r.fields)) + "\n" for r in records]
        (folder / f"{name}.jsonl").write_text("".join(rows))


def conversational(fields: dict) -> dict:
    """A record as chat messages: TRL applies the chat template to those only (to plain strings it does
    not), and freezetune renders both alike, so both tools then see the same token ids."""
    return {
        "prompt": [{"role": "user", "content": fields["prompt"]}],
        "chosen": [{"role": "assistant", "content": fields["chosen"]}],
        "rejected": [{"role": "assistant", "content": fields["rejected"]}],
    }


def same_token_ids(folder: Path, trainer) -> bool:
    """Whether TRL tokenized every training pair to the token ids freezetune trains on."""
    from freezetune.data.files import read_records
    from freezetune.data.preferences import paired_examples

    ours = paired_examples(
        read_records(str(folder / "train.jsonl")), trainer.processing_class, SEQ_LEN
    ).examples
    theirs = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return len(ours) == 2 * len(theirs) and all(
        ours[2 * i].input_ids == t["prompt_ids"] + t["chosen_ids"]
        and ours[2 * i + 1].input_ids == t["prompt_ids"] + t["rejected_ids"]
        for i, t in enumerate(theirs)
    )


def frozen_by_hand(model, frozen_blocks: int) -> None:
    """What a TRL user writes: the embeddings (so the tied head) and the bottom blocks frozen."""
    for name, param in model.named_parameters():
        block = name.split(".")[2] if name.startswith("model.layers.") else None
        frozen = name.startswith("model.embed_tokens") or (
            block is not None and int(block) < frozen_blocks
        )
        param.requires_grad_(not frozen)


def run_freezetune(folder: Path, name: str, steps: int) -> dict:
    from freezetune.config.run import TrainConfig
    from freezetune.training.loop import TrainingLoop
    from freezetune.training.session import open_session

    plan = {"freeze": "freeze bottom 75%", "full": "train all", "lora": None}[name]
    config = TrainConfig(
        model=str(folder / "model"),
        objective="dpo",
        data=str(folder / "train.jsonl"),
        eval_data=str(folder / "eval.jsonl"),
        out=str(folder / "runs" / f"{name}-{time.time_ns()}"),
        plan=plan,
        lora_r=16 if name == "lora" else 0,
        lr=LR,
        precision="fp32",
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        max_steps=steps,
        prefix_cache="off",  # every step is a first epoch's: nothing replayed, nothing kept
        save_every=0,
        show_generations=0,
    )
    loop = TrainingLoop(open_session(config), log=lambda message: None, progress=False)
    loop.run()
    records = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").open()]
    return {
        "step_times_s": [r["step_time_s"] for r in records],
        "peak_rss_bytes": max(r["peak_memory_bytes"] for r in records),
        "reference_bytes": loop.reference.nbytes,
        "trainable_params": loop.session.resolved.trainable_params,
    }


def run_trl(folder: Path, name: str, steps: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from freezetune.training.peak_memory import peak_memory_bytes

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    frozen_by_hand(model, model.config.num_hidden_layers * 3 // 4)
    rows = [json.loads(line) for line in (folder / "train.jsonl").open()]
    args = DPOConfig(
        output_dir=str(folder / "trl"),
        beta=0.1,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        max_length=SEQ_LEN,
        gradient_checkpointing=name == "trl_freeze_checkpointing",
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(folder / "model"),
        callbacks=[StepTimer()],
    )
    same = same_token_ids(folder, trainer)
    trainer.train()
    reference = trainer.ref_model
    return {
        "same_token_ids": same,
        "step_times_s": times,
        "peak_rss_bytes": peak_memory_bytes(torch.device("cpu")),
        "reference_bytes": sum(p.numel() * p.element_size() for p in reference.parameters())
        if reference is not None
        else 0,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def child(folder: Path, name: str, steps: int) -> dict:
    from freezetune.training.peak_memory import current_rss_bytes

    before = current_rss_bytes() or 0
    measured = (run_trl if name.startswith("trl") else run_freezetune)(folder, name, steps)
    return {**measured, "peak_bytes": measured.pop("peak_rss_bytes") - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first is set-up)")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "larger"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpo.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], int(args.child[2]))))
        return
    models = {}
    for model in args.models:
        runs: dict[str, list[dict]] = {name: [] for name in RUNS}
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp), model)
            for round_ in range(args.rounds):
                for name in RUNS if round_ % 2 == 0 else RUNS[::-1]:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", tmp, name, str(args.steps)],
                        capture_output=True,
                        text=True,
                    )
                    if out.returncode:
                        raise SystemExit(f"{model} {name}: {out.stderr[-3000:]}")
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(
                        f"{model} round {round_ + 1} {name}: {runs[name][-1]['peak_bytes'] / 2**30:.2f} GiB"
                    )
        rows = {}
        for name, measured in runs.items():
            times = [t for m in measured for t in m["step_times_s"][1:]]
            rows[name] = {
                "step_time_s": statistics.median(times),
                "step_times_s": times,
                "peak_bytes": statistics.median(m["peak_bytes"] for m in measured),
                "reference_bytes": measured[0]["reference_bytes"],
                "trainable_params": measured[0]["trainable_params"],
                **(
                    {"same_token_ids": all(m["same_token_ids"] for m in measured)}
                    if "same_token_ids" in measured[0]
                    else {}
                ),
            }
        freeze, trl = rows["freeze"], rows["trl_freeze"]
        models[model] = {
            "runs": rows,
            "ratios": {
                "trl_over_freezetune_step_time": trl["step_time_s"] / freeze["step_time_s"],
                "trl_over_freezetune_peak_memory": trl["peak_bytes"] / freeze["peak_bytes"],
                "trl_over_freezetune_reference_bytes": trl["reference_bytes"]
                / freeze["reference_bytes"],
                "full_over_freeze_step_time": rows["full"]["step_time_s"] / freeze["step_time_s"],
                "full_over_freeze_peak_memory": rows["full"]["peak_bytes"] / freeze["peak_bytes"],
            },
        }
        print(json.dumps(models[model]["ratios"], indent=2))
    result = {
        "provenance": provenance(),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "data": f"built-in preference task, {PAIRS} pairs",
        "batch_pairs": BATCH,
        "seq_len": SEQ_LEN,
        "precision": "fp32",
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "larger_shape": LARGER,
        "models": models,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
