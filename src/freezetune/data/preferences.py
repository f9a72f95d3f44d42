"""Preference records -> token pairs, for preference tuning (DPO).

A record holds ``prompt``, ``chosen`` and ``rejected``, as TRL accepts them: plain strings, or
conversational, where ``prompt`` is a list of messages ending with a user turn and ``chosen`` and
``rejected`` are lists holding the assistant's answer. Each pair renders as two SFT examples
(data/examples.py) that share the prompt's tokens, with the loss on the final answer only: the
tokens of earlier assistant turns inside the prompt are context, not preference.

The built-in preference task comes from the dispatch task: chosen is the right dispatch line,
rejected a near miss with one field wrong (the quantity off by a little, the colour the
customer took back, the decoy city, the day next to the right one), so that telling them apart
takes reading the order, not the format.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from freezetune.data.examples import IGNORE, Example, TokenizedData, refuse_malformed, render_sft
from freezetune.data.files import Record
from freezetune.data.shapes import valid_messages
from freezetune.data.tasks import CITIES, COLORS, DAYS, dispatch_task
from freezetune.errors import FreezetuneError

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    chosen: Example
    rejected: Example
    where: str


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    truncated: int = 0
    dropped: int = 0
    identical: int = 0  # chosen and rejected the same tokens: no preference to learn or score
    notes: list[str] = field(default_factory=list)


def _messages(record: Record, name: str, errors: list[str], last: str) -> list[dict] | None:
    """A field as chat messages: a string is one message of role ``last``; a list must end with one."""
    value = record.fields.get(name)
    if isinstance(value, str):
        if not value.strip():
            errors.append(f"{record.where}: field '{name}' is empty")
            return None
        return [{"role": last, "content": value}]
    if not isinstance(value, list) or not value:
        kind = "an empty list" if isinstance(value, list) else type(value).__name__
        errors.append(
            f"{record.where}: field '{name}' must be a string or a non-empty list of messages, got {kind}"
        )
        return None
    if not valid_messages(record, name, value, errors):
        return None
    if value[-1]["role"] != last:
        article = "an" if last == "assistant" else "a"  # "a user", "an assistant"
        errors.append(f"{record.where}: field '{name}' must end with {article} {last} message")
        return None
    if last == "assistant" and not value[-1]["content"].strip():
        errors.append(f"{record.where}: field '{name}[{len(value) - 1}].content' is empty")
        return None
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _conversation(record: Record, errors: list[str]) -> tuple[list, list, list] | None:
    # a column other records have and this one lacks reads as None (JSON lines, CSV, parquet alike)
    missing = [name for name in FIELDS if record.fields.get(name) is None]
    if missing:
        errors.append(
            f"{record.where}: a preference record needs 'prompt', 'chosen' and 'rejected'; "
            f"'{missing[0]}' is missing (found {record.given})"
        )
        return None
    prompt = _messages(record, "prompt", errors, "user")
    chosen = _messages(record, "chosen", errors, "assistant")
    rejected = _messages(record, "rejected", errors, "assistant")
    if prompt is None or chosen is None or rejected is None:
        return None
    return prompt, chosen, rejected


def _answer_only(example: Example) -> Example:
    """The example with its loss on the last answer alone (earlier assistant turns are context)."""
    start = len(example.prompt_ids or [])
    return replace(example, labels=[IGNORE] * start + example.labels[start:])


def preference_examples(records: list[Record], tokenizer, seq_len: int) -> PreferenceData:
    """Every record as a chosen and a rejected example; bad records are one error naming each."""
    errors: list[str] = []
    conversations = [(r, _conversation(r, errors)) for r in records]
    refuse_malformed(errors, "preference record")
    data = PreferenceData([])
    for record, (prompt, chosen, rejected) in conversations:
        sides = [
            # a 'system' field is the system prompt of both sides, as in an SFT record
            Record(
                {"messages": prompt + answer, "system": record.fields.get("system")},
                f"{record.where} ({side})",
            )
            for side, answer in (("chosen", chosen), ("rejected", rejected))
        ]
        rendered = render_sft(sides, tokenizer, seq_len)
        # a side lost its whole answer to --seq-len: the pair says nothing
        if len(rendered.examples) < 2:
            data.dropped += 1
            continue
        data.truncated += rendered.truncated > 0
        pair = [_answer_only(e) for e in rendered.examples]
        # the same answer twice, as written or once --seq-len cut where they differ: its loss is
        # log 2 whatever the weights, and its "accuracy" a coin toss of rounding
        if pair[0].input_ids == pair[1].input_ids:
            data.identical += 1
            continue
        data.pairs.append(PreferencePair(pair[0], pair[1], record.where))
    if not data.pairs and not data.identical:
        raise FreezetuneError(
            f"no usable preference pair: all {data.dropped} lost an answer to --seq-len {seq_len}; "
            "raise --seq-len"
        )
    if not data.pairs:
        raise FreezetuneError(
            f"no usable preference pair: {data.identical} {'has' if data.identical == 1 else 'have'} "
            "the same chosen and rejected answer"
            + (f", {data.dropped} lost an answer to --seq-len {seq_len}" if data.dropped else "")
        )
    if data.identical:
        data.notes.append(
            f"{data.identical} preference pair{'s' * (data.identical != 1)} with the same chosen and "
            f"rejected answer (as written, or once --seq-len {seq_len} cut them) skipped: "
            "no preference to learn"
        )
    if data.truncated or data.dropped:
        data.notes.append(
            f"{data.truncated} preference pair{'s' * (data.truncated != 1)} longer than --seq-len "
            f"{seq_len} truncated; {data.dropped} lost a whole answer and "
            f"{'was' if data.dropped == 1 else 'were'} skipped"
        )
    return data


def paired_examples(records: list[Record], tokenizer, seq_len: int) -> TokenizedData:
    """Preference records as training rows: pair i's chosen answer at 2i, its rejected one at 2i + 1."""
    data = preference_examples(records, tokenizer, seq_len)
    rows = [e for pair in data.pairs for e in (pair.chosen, pair.rejected)]
    return TokenizedData(rows, data.truncated, data.dropped, data.notes, paired=True)


LINE = re.compile(r"(\d+) x (\S+) (.+) to (.+) on (\S+)")


def near_miss(answer: str, prompt: str, rng: random.Random) -> str:
    """The dispatch line with one field wrong, the way a careless reading gets it wrong."""
    qty, color, item, city, day = LINE.fullmatch(answer).groups()
    said = [c for c in COLORS if c != color and f"{c}, no wait" in prompt]
    decoys = [c for c in CITIES if c != city and c in prompt]
    choices = {
        "qty": lambda: str(max(1, int(qty) + rng.choice([-2, -1, 1, 2]))),
        "color": lambda: said[0] if said else rng.choice([c for c in COLORS if c != color]),
        "city": lambda: decoys[0] if decoys else rng.choice([c for c in CITIES if c != city]),
        "day": lambda: DAYS[(DAYS.index(day) + rng.choice([-1, 1])) % 7],
    }
    wrong = rng.choice(sorted(choices))
    parts = {"qty": qty, "color": color, "city": city, "day": day, wrong: choices[wrong]()}
    if parts[wrong] == {"qty": qty, "color": color, "city": city, "day": day}[wrong]:
        parts["qty"] = str(int(qty) + 1)  # a quantity of 1 moved to 1: move it the other way
    return f"{parts['qty']} x {parts['color']} {item} to {parts['city']} on {parts['day']}"


def preference_task(
    train_size: int = 600, eval_size: int = 200, seed: int = 4321
) -> tuple[list[Record], list[Record]]:
    """(train, held-out) preference records of the dispatch task: the right line over a near miss."""
    rng = random.Random(seed + 7)
    splits = []
    for records in dispatch_task(train_size, eval_size, seed):
        splits.append(
            [
                Record(
                    {
                        "prompt": r.fields["prompt"],
                        "chosen": r.fields["completion"],
                        "rejected": near_miss(r.fields["completion"], r.fields["prompt"], rng),
                    },
                    r.where.replace("dispatch task", "preference task"),
                )
                for r in records
            ]
        )
    return splits[0], splits[1]
