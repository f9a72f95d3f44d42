"""Names a user brings from elsewhere, and the option each one means here: a HF Trainer,
LLaMA-Factory or Axolotl key (`learning_rate`), another command's spelling (`plan --model`, where
plan takes the model bare), or a near miss. "unknown option" alone leaves the user to guess."""

from __future__ import annotations

import dataclasses
import difflib

from freezetune.config.fields import flag_of

# the other tools' names of options freezetune has, where the two differ
OTHER_TOOLS = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",  # Axolotl
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",  # Axolotl
    "gradient_accumulation_steps": "grad_accum",
    "cutoff_len": "seq_len",  # LLaMA-Factory
    "max_seq_length": "seq_len",  # TRL
    "sequence_len": "seq_len",  # Axolotl
    "warmup_steps": "warmup",
    "output_dir": "out",
    "model_name_or_path": "model",
    "base_model": "model",  # Axolotl
    "dataset": "data",
    "datasets": "data",
    "train_file": "data",
    "eval_dataset": "eval_data",
    "validation_file": "eval_data",
    "lora_rank": "lora_r",
    "lora_target": "lora_targets",
    "lora_target_modules": "lora_targets",
    "save_steps": "save_every",
    "eval_steps": "eval_every",
    "resume_from_checkpoint": "resume",
    "stage": "objective",  # LLaMA-Factory: sft, pt, dpo
    # what to freeze: a plan here (`freezetune plan MODEL PLAN --format` prints theirs)
    "finetuning_type": "plan",  # LLaMA-Factory
    "freeze_trainable_layers": "plan",
    "freeze_trainable_modules": "plan",
    "freeze_extra_modules": "plan",
    "unfrozen_parameters": "plan",  # Axolotl
    "plan": "strategy",  # compare: a plan is one strategy
    "pref_beta": "beta",
    "bf16": "precision",
    "fp16": "precision",
}


def likely_options(key: str, fields: list[str]) -> list[str]:
    """The options an unknown ``key`` most likely means: what another tool calls it, else those it
    begins (`lr` in a compare file: lr_full, lr_lora, ...), else the closest spelling."""
    while key not in fields and key in OTHER_TOOLS:  # freeze_trainable_layers -> plan -> strategy
        key = OTHER_TOOLS[key]
    if key in fields:
        return [key]
    return [f for f in fields if f.startswith(key + "_")] or difflib.get_close_matches(
        key, fields, n=1
    )


def did_you_mean(names: list[str]) -> str:
    """' (did you mean a, b or c?)', or nothing where there is no guess."""
    if not names:
        return ""
    listed = "".join(f"{n}, " for n in names[:-2]) + "".join(f"{n} or " for n in names[-2:-1])
    return f" (did you mean {listed}{names[-1]}?)"


def misnamed_flag(cls: type, argv: list[str]) -> str | None:
    """What to say of a flag command ``argv[0]`` spells otherwise: a positional argument typed as a
    flag (`plan --model M`), HF's underscores (`--max_steps`), or another tool's name
    (`train --learning_rate 1e-4`)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    bare = [f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")]
    flagged = [n for n in fields if n not in bare]
    own_flags = [flag_of(n) for n in flagged] + ["--config", "--help", "--version"]
    for word in argv[1:]:
        flag = word.split("=")[0]
        name = flag[2:].replace("-", "_")
        if not flag.startswith("--") or (
            name in fields and name not in bare and flag == flag_of(name)
        ):
            continue
        if name in bare:
            usage = " ".join(n.upper() for n in bare)
            return f"{flag}: the {name} is given without a flag here: freezetune {argv[0]} {usage}"
        if name in fields:
            return f"{flag}: no such flag{did_you_mean([flag_of(name)])}"
        if name in OTHER_TOOLS:
            meant = [flag_of(n) for n in likely_options(name, fields)]
            return f"{flag}: no such flag{did_you_mean(meant)}"
        if any(known.startswith(flag) for known in own_flags):
            continue  # an abbreviation: argparse takes it, or refuses it as ambiguous
        if near := difflib.get_close_matches(name, flagged, n=1):
            return f"{flag}: no such flag{did_you_mean([flag_of(near[0])])}"  # --steps: --max-steps
    return None
