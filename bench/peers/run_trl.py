"""TRL's SFTTrainer on the bench's rows, with the frozen blocks set by hand as its users do.

    python bench/peers/run_trl.py check JOB ANSWER       # the rows TRL prepared, and what trains
    python bench/peers/run_trl.py train JOB OUT ANSWER   # train, save, write the step times

The embeddings (and the head tied to them) and blocks 0..frozen-1 get requires_grad=False; the rest,
the final norm included, trains. Everything else is SFTConfig's defaults (gradient checkpointing on),
apart from the settings all three tools share: batch, epochs, rate, schedule, AdamW (torch), length.
"""

from __future__ import annotations

import sys

import torch
from datasets import Dataset
from hf_job import StepTimer, read_job, report, rows_match, shared_arguments, trainable_count, usage
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def trainer_for(job: dict, out: str, callbacks=()) -> SFTTrainer:
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    for name, param in model.named_parameters():
        block = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        frozen = name.startswith("model.embed_tokens") or (
            block is not None and block < job["frozen_blocks"]
        )
        param.requires_grad_(not frozen)
    config = SFTConfig(
        output_dir=out,
        max_length=job["seq_len"],
        use_cpu=True,
        **shared_arguments(job),
        # None: SFTConfig's default (on); False: the control without checkpointing
        **({} if job.get("gradient_checkpointing") is None else {"gradient_checkpointing": False}),
    )
    rows = Dataset.from_list(job["rows"])
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] not in ("check", "train"):
        usage(__doc__)
    job = read_job(sys.argv[2])
    if sys.argv[1] == "check":
        trainer = trainer_for(job, "/tmp/freezetune-peers-trl-check")
        report(
            sys.argv[3],
            rows_equal=rows_match(job, trainer.train_dataset),
            trainable=trainable_count(trainer.model),
            gradient_checkpointing=trainer.args.gradient_checkpointing,
        )
        return
    out, timer = sys.argv[3], StepTimer()
    trainer = trainer_for(job, out, [timer])
    trainer.train()
    trainer.save_model(out)
    report(sys.argv[4], step_times_s=timer.times, trainable=trainable_count(trainer.model))


if __name__ == "__main__":
    main()
