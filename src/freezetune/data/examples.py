"""Records -> token examples: SFT with loss on responses only, CPT packed into blocks.

SFT records are one of the shapes of shapes.py, and all become chat messages. With a
chat template the text is rendered by the tokenizer's template, turn by turn, so that the
tokens of every assistant turn (and only those) carry the loss; without one, prompt and
completion are concatenated with an end-of-sequence token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch

from freezetune.data.files import Record
from freezetune.data.shapes import SHAPES, string_field, to_messages
from freezetune.errors import FreezetuneError

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    where: str
    prompt_ids: list[int] | None = None  # SFT: the tokens a generation starts from
    reference: str | None = None  # SFT: the expected last response, for exact match
    prompt_text: str | None = None  # SFT: the last user message, for showing generations


@dataclass
class TokenizedData:
    examples: list[Example]
    truncated: int = 0
    dropped: int = 0  # examples whose response was cut off entirely by --seq-len
    notes: list[str] = field(default_factory=list)
    # preference data: examples 2i and 2i+1 are pair i's chosen and rejected answers
    paired: bool = False

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    @property
    def units(self) -> int:
        """What a batch counts: examples, or pairs of preference data (as TRL's batch size does)."""
        return len(self.examples) // 2 if self.paired else len(self.examples)

    def rows(self, units: list[int]) -> list[int]:
        """The example indices of ``units`` (a pair's two rows side by side)."""
        return [r for u in units for r in ((2 * u, 2 * u + 1) if self.paired else (u,))]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _chat_segments(tokenizer, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """Token ids, labels, and the prompt of the last assistant turn, rendered by the template."""
    ids, labels, rendered, prompt_ids = [], [], "", []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not before.startswith(rendered) or not through.startswith(before):
            raise FreezetuneError(
                "the tokenizer's chat template does not render conversations turn by turn"
            )
        context = _encode(tokenizer, before[len(rendered) :])
        response = _encode(tokenizer, through[len(before) :])
        ids += context
        labels += [IGNORE] * len(context)
        prompt_ids = list(ids)
        ids += response
        labels += response
        rendered = through
    return ids, labels, prompt_ids


def _plain_segments(tokenizer, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    if len(messages) != 2:
        raise FreezetuneError(
            "records of several turns ('messages' or 'conversations', or a 'system' or 'history' "
            "field) need a tokenizer with a chat template"
        )
    prompt = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + _encode(
        tokenizer, messages[0]["content"]
    )
    response = _encode(tokenizer, messages[1]["content"]) + [tokenizer.eos_token_id]
    return prompt + response, [IGNORE] * len(prompt) + response, prompt


# "orders.jsonl line 7: field 'completion' is missing", as every record error starts
_RECORD_ERROR = re.compile(
    r"^(?P<file>.*?) (?P<unit>line|row|record) (?P<n>\d+)(?P<side> \(\w+\))?: (?P<say>.*)$"
)


def refuse_malformed(errors: list[str], what: str = "record") -> None:
    """Every bad record in one error: the first five faults by file, line and field, and how many
    more. Records with the same fault share one mention, so a file of the wrong shape reads once."""
    if not errors:
        return
    faults: dict[tuple, list[str]] = {}
    for error in errors:
        match = _RECORD_ERROR.match(error)
        key = (
            (match["file"], match["unit"], match["side"] or "", match["say"]) if match else (error,)
        )
        faults.setdefault(key, []).append(match["n"] if match else "")
    shown = []
    for key, numbers in list(faults.items())[:5]:
        if len(key) == 1:
            shown.append(key[0])
            continue
        file, unit, side, say = key
        more = f" and {len(numbers) - 3} more" if len(numbers) > 3 else ""
        plural = "s" if len(numbers) > 1 else ""
        shown.append(f"{file} {unit}{plural} {', '.join(numbers[:3])}{more}{side}: {say}")
    rest = sum(len(numbers) for numbers in list(faults.values())[5:])
    # a record with two faults is one malformed record
    records = len(
        {(m["file"], m["unit"], m["n"]) if (m := _RECORD_ERROR.match(e)) else e for e in errors}
    )
    raise FreezetuneError(
        f"{records} malformed {what}{'s' * (records != 1)}: "
        + "; ".join(shown)
        + (f"; and {rest} more" if rest else "")
    )


def sft_examples(records: list[Record], tokenizer, seq_len: int) -> TokenizedData:
    data = render_sft(records, tokenizer, seq_len)
    _finish(data, "SFT", seq_len)
    return data


def render_sft(records: list[Record], tokenizer, seq_len: int) -> TokenizedData:
    """The records' examples, those that lost their whole response to ``seq_len`` counted as dropped
    (sft_examples then refuses data with none left; preference pairs judge each pair themselves)."""
    errors: list[str] = []
    conversations = [(r, to_messages(r, errors)) for r in records]
    refuse_malformed(errors)
    render = _chat_segments if getattr(tokenizer, "chat_template", None) else _plain_segments
    data = TokenizedData([])
    for record, messages in conversations:
        ids, labels, prompt_ids = render(tokenizer, messages)
        if len(ids) > seq_len:
            data.truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
            if all(label == IGNORE for label in labels[1:]):
                data.dropped += 1
                continue
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        data.examples.append(
            Example(ids, labels, record.where, prompt_ids, messages[-1]["content"], last_user)
        )
    return data


def _objective_of(record: Record) -> str | None:
    """The objective whose records this one looks like (preference pairs, or an SFT shape), if any."""
    if record.fields.get("chosen") is not None and record.fields.get("rejected") is not None:
        return "dpo"
    shaped = any(record.fields.get(k) is not None for keys in SHAPES.values() for k in keys)
    return "sft" if shaped else None


def cpt_examples(records: list[Record], tokenizer, seq_len: int) -> TokenizedData:
    """Raw text (a 'text' field) tokenized, joined with EOS, packed into seq_len blocks."""
    errors: list[str] = []
    stream: list[int] = []
    for record in records:
        if record.fields.get("text") is None and (objective := _objective_of(record)):
            errors.append(
                f"{record.where}: field 'text' is missing (found {record.given}); "
                f"records of this shape train with --objective {objective}"
            )
            continue
        text = string_field(record, "text", errors)
        if text is not None:
            stream += _encode(tokenizer, text) + [tokenizer.eos_token_id]
    refuse_malformed(errors)
    data = TokenizedData([])
    for start in range(0, len(stream) - 1, seq_len):
        block = stream[start : start + seq_len]
        if len(block) >= 2:  # a one-token block predicts nothing
            data.examples.append(Example(block, list(block), f"block {len(data.examples)}"))
    _finish(data, "CPT", seq_len)
    return data


def _finish(data: TokenizedData, kind: str, seq_len: int) -> None:
    if not data.examples and data.dropped:
        raise FreezetuneError(
            f"no usable {kind} example: all {data.dropped} lost their whole response to --seq-len {seq_len}; "
            "raise --seq-len"
        )
    if not data.examples:
        raise FreezetuneError(
            f"no usable {kind} example: the data holds no record with text to learn from"
        )
    if data.truncated:
        one, dropped_one = data.truncated == 1, data.dropped == 1
        lost = (
            f"; {data.dropped} lost {'its' if dropped_one else 'their'} whole response and "
            f"{'was' if dropped_one else 'were'} skipped"
            if data.dropped
            else ""
        )
        data.notes.append(
            f"{data.truncated} example{'' if one else 's'} longer than --seq-len {seq_len} "
            f"{'was' if one else 'were'} truncated{lost}"
        )


def split_holdout(
    data: TokenizedData, fraction: float, seed: int, count: int | None = None
) -> tuple[TokenizedData, TokenizedData]:
    """Hold out a seeded fraction (or ``count``) of examples (or preference pairs) for evaluation."""
    order = list(range(data.units))
    random.Random(seed).shuffle(order)
    cut = (
        count if count is not None else max(1, int(len(order) * fraction)) if len(order) > 1 else 0
    )
    held, kept = sorted(order[:cut]), sorted(order[cut:])
    train = TokenizedData(
        [data.examples[i] for i in data.rows(kept)],
        data.truncated,
        data.dropped,
        data.notes,
        data.paired,
    )
    return train, TokenizedData([data.examples[i] for i in data.rows(held)], paired=data.paired)


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with; many causal LMs have no pad token and reuse EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: pads get no attention and no loss, so real positions are unaffected."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
