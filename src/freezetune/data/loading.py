"""A run's examples: its data files (or a built-in task) tokenized, with the held-out split fixed once.

The held-out and validation splits never follow the training seed, so every seed, every strategy
and the base model are scored on the same items.
"""

from __future__ import annotations

from freezetune.data.examples import TokenizedData, cpt_examples, sft_examples, split_holdout
from freezetune.data.files import read_records
from freezetune.data.preferences import paired_examples, preference_task
from freezetune.data.tasks import dispatch_task, stdlib_docstrings
from freezetune.errors import FreezetuneError

# held-out and validation splits never follow --seed: every seed and strategy is scored on the same items
SPLIT_SEED = 0


def load_data(
    tokenizer,
    objective: str = "sft",
    data: str | None = None,
    eval_data: str | None = None,
    seq_len: int = 256,
    validation: int = 0,
) -> tuple[TokenizedData, TokenizedData, list[str]]:
    """Train and eval examples, and notes for the log: ``data`` (else the built-in task for SFT, the standard
    library's docstrings for CPT), held out by ``eval_data`` or 5% of ``data``; ``validation`` > 0 scores on that
    many training examples (pairs, for DPO) instead."""
    tokenize = {"sft": sft_examples, "cpt": cpt_examples, "dpo": paired_examples}[objective]
    notes = []
    if data is None:
        if objective == "dpo":
            train_records, eval_records = preference_task()
            notes.append(
                f"data: built-in preference task (the dispatch line over a near miss), "
                f"{len(train_records)} train / {len(eval_records)} held-out pairs"
            )
        elif objective == "sft":
            train_records, eval_records = dispatch_task()
            notes.append(
                f"data: built-in dispatch task, {len(train_records)} train / {len(eval_records)} held-out"
            )
        else:
            docs = stdlib_docstrings()
            train_records, eval_records = (
                docs[: int(len(docs) * 0.95)],
                docs[int(len(docs) * 0.95) :],
            )
            notes.append(
                f"data: standard-library docstrings, {len(train_records)} train / "
                f"{len(eval_records)} held-out documents"
            )
        train, held = (
            tokenize(train_records, tokenizer, seq_len),
            tokenize(eval_records, tokenizer, seq_len),
        )
    else:
        train = tokenize(read_records(data), tokenizer, seq_len)
        if eval_data:
            held = tokenize(read_records(eval_data), tokenizer, seq_len)
        else:
            train, held = split_holdout(train, 0.05, SPLIT_SEED)
            notes.append(
                f"eval: no --eval-data, holding out {held.units} {_unit(held)} of --data "
                "(the same for every seed)"
            )
    notes += train.notes + held.notes
    if objective != "cpt" and not getattr(tokenizer, "chat_template", None):
        # a base model's tokenizer: what the model sees is worth a line (examples._plain_segments)
        notes.append(
            f"{objective}: the tokenizer has no chat template, so each example is its prompt "
            "followed directly by its answer and EOS (no separator is added)"
        )
    if validation:  # score on a seeded slice of the training data; the held-out split stays unseen
        if validation >= train.units:
            raise FreezetuneError(
                f"--validation {validation} leaves no training example "
                f"(the training data has {train.units} {_unit(train)})"
            )
        train, held = split_holdout(train, 0.0, SPLIT_SEED, count=validation)
        notes.append(
            f"eval: {held.units} training {_unit(held)} carved out as the validation split"
        )
    if not held.examples:
        raise FreezetuneError("no evaluation example: give --eval-data or more --data")
    overlap = _seen_in_training(train, held, "validation" if validation else "held-out")
    return train, held, notes + ([overlap] if overlap else [])


def _seen_in_training(train: TokenizedData, held: TokenizedData, split: str) -> str | None:
    """A notice when evaluation units are training units token for token (the same file given twice,
    or a record repeated in one file): their scores measure recall of what trained, not held-out quality."""

    def tokens(data: TokenizedData, unit: int) -> tuple:
        return tuple(tuple(data.examples[r].input_ids) for r in data.rows([unit]))

    # hash -> training units: a table of hashes, not a second copy of every token
    trained: dict[int, list[int]] = {}
    for unit in range(train.units):
        trained.setdefault(hash(tokens(train, unit)), []).append(unit)
    seen = []
    for unit in range(held.units):
        key = tokens(held, unit)
        match = next((u for u in trained.get(hash(key), []) if tokens(train, u) == key), None)
        if match is not None:
            seen.append((unit, match))
    if not seen:
        return None
    unit, match = seen[0]
    where = (
        held.examples[held.rows([unit])[0]].where,
        train.examples[train.rows([match])[0]].where,
    )
    return (
        f"notice: {len(seen)} of {held.units} {split} {_unit(held)} {'is' if len(seen) == 1 else 'are'} "
        f"also in the training data, token for token (the first: {where[0]} is {where[1]}); scores "
        "on them measure what was trained on, not held-out quality"
    )


def _unit(data: TokenizedData) -> str:
    """'pairs' or 'examples', as the data holds, and singular for one ("holding out 1 pair")."""
    return ("pair" if data.paired else "example") + ("s" if data.units != 1 else "")
