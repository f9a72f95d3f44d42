"""LLaMA-Factory's freeze mode on the bench's rows, run in its own venv (bench/peers/llamafactory/).

    python run_llamafactory.py prepare JOB DATASET        # the rows as a tokenized dataset on disk
    python run_llamafactory.py check JOB DATASET ANSWER   # the rows its loader returns, and what trains
    python run_llamafactory.py train JOB DATASET OUT ANSWER

The rows reach it through `tokenized_path` (its documented way to train on pre-tokenized data), so it
trains on exactly the bench's token ids and labels. Freeze mode trains the top blocks
(`freeze_trainable_layers`). Not the final norm: naming it as an extra module (`norm`) matches by
substring and also unfreezes the 44 norms of the frozen blocks; so 576 parameters fewer train here
than in the other two. Everything else is its defaults (gradient checkpointing on) apart from the
settings all three tools share.
"""

from __future__ import annotations

import sys

from hf_job import StepTimer, read_job, report, rows_match, shared_arguments, trainable_count, usage


def arguments(job: dict, dataset: str, out: str) -> dict:
    return {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": job["model"],
        "finetuning_type": "freeze",
        "freeze_trainable_layers": job["num_blocks"] - job["frozen_blocks"],
        "freeze_trainable_modules": "all",
        "template": "default",
        "dataset": "bench_rows",  # a name its parser asks for; tokenized_path is what it loads
        "tokenized_path": dataset,
        "cutoff_len": job["seq_len"],
        "output_dir": out,
        "overwrite_output_dir": True,
        "gradient_accumulation_steps": 1,
        **shared_arguments(job),
        # the control without checkpointing; by default LLaMA-Factory's own (on)
        **(
            {}
            if job.get("gradient_checkpointing") is None
            else {"disable_gradient_checkpointing": True}
        ),
    }


def prepare(job: dict, dataset: str) -> None:
    from datasets import Dataset

    rows = [{**row, "attention_mask": [1] * len(row["input_ids"])} for row in job["rows"]]
    Dataset.from_list(rows).save_to_disk(dataset)


def check(job: dict, dataset: str, answer: str) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(
        arguments(job, dataset, "/tmp/freezetune-peers-lf-check")
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    rows = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    model = load_model(
        tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True
    )
    report(
        answer,
        rows_equal=rows_match(job, rows["train_dataset"]),
        trainable=trainable_count(model),
        gradient_checkpointing=not model_args.disable_gradient_checkpointing,
    )


def train(job: dict, dataset: str, out: str, answer: str) -> None:
    from llamafactory.train.tuner import run_exp

    timer = StepTimer()
    run_exp(arguments(job, dataset, out), callbacks=[timer])
    report(answer, step_times_s=timer.times)


def main() -> None:
    modes = {"prepare": 4, "check": 5, "train": 6}
    if len(sys.argv) < 2 or len(sys.argv) != modes.get(sys.argv[1]):
        usage(__doc__)
    job = read_job(sys.argv[2])
    {"prepare": prepare, "check": check, "train": train}[sys.argv[1]](job, *sys.argv[3:])


if __name__ == "__main__":
    main()
