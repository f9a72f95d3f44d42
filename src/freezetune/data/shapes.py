"""SFT record shapes -> chat messages, the one form every record becomes.

    prompt / completion                                  one user turn, one answer
    instruction / input / output                         Alpaca: the input follows the instruction
    messages: [{role, content}, ...]                     the conversation, ending with an answer
    conversations: [{from, value}, ...]                  ShareGPT: the same, tagged human/gpt/system

The two flat shapes also take LLaMA-Factory's ``system`` (a system prompt) and ``history``
(earlier turns as [user, assistant] pairs); the two conversation shapes take ``system`` when
they hold none of their own. A record that mixes two shapes is refused: which one it meant is
not ours to guess.
"""

from __future__ import annotations

from freezetune.data.files import Record

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker tags, as LLaMA-Factory reads them, and the plain roles some exports use
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", **{role: role for role in ROLES}}
SHAPES = {
    "messages": ("messages",),
    "ShareGPT": ("conversations",),
    "Alpaca": ("instruction", "output"),
    "prompt": ("prompt", "completion"),
}


def string_field(record: Record, name: str, errors: list[str], required: bool = True) -> str | None:
    value = record.fields.get(name)
    if value is None:
        if required:
            errors.append(f"{record.where}: field '{name}' is missing")
        return None
    if not isinstance(value, str):
        errors.append(
            f"{record.where}: field '{name}' must be a string, got {type(value).__name__}"
        )
        return None
    if required and not value.strip():
        errors.append(f"{record.where}: field '{name}' is empty")
        return None
    return value


def valid_messages(record: Record, name: str, messages: list, errors: list[str]) -> bool:
    """Whether every item is a {role, content} message; else one error naming the field and the index."""
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            errors.append(
                f"{record.where}: field '{name}[{i}]' must be {{role: system|user|assistant, content: string}}"
            )
            return False
    return True


def to_messages(record: Record, errors: list[str]) -> list[dict] | None:
    """The record's conversation, or None with one error appended."""
    fields = record.fields
    given = [
        shape for shape, keys in SHAPES.items() if any(fields.get(k) is not None for k in keys)
    ]
    if len(given) > 1:
        named = " and ".join(f"{s} ({'/'.join(SHAPES[s])})" for s in given)
        errors.append(f"{record.where}: the fields of two record shapes, {named}: give one")
        return None
    if not given:
        # TRL's SFT takes plain 'text' records; here they are continued pre-training's
        raw = "; raw 'text' records train with --objective cpt" if "text" in fields else ""
        errors.append(
            f"{record.where}: no SFT fields; expected 'prompt'+'completion', 'instruction'+'output', "
            f"'messages' or 'conversations' (found {record.given}){raw}"
        )
        return None
    system = string_field(record, "system", errors, required=False)
    if system is None and fields.get("system") is not None:
        return None  # not a string: said in errors
    name = SHAPES[given[0]][0]  # the shape's first field: for a conversation, all its turns
    if given[0] in ("messages", "ShareGPT"):
        turns = _conversation(record, name, errors)
        if turns is None or fields.get("history") is not None:
            if turns is not None:
                errors.append(
                    f"{record.where}: field 'history' is for flat records; '{name}' holds every turn"
                )
            return None
    else:
        turns = _flat(record, errors, given[0])
        if turns is None:
            return None
    if system is not None and system.strip():
        if turns[0]["role"] == "system":
            errors.append(
                f"{record.where}: a system prompt in field 'system' and another in '{name}'"
            )
            return None
        turns = [{"role": "system", "content": system}, *turns]
    return turns


def _conversation(record: Record, name: str, errors: list[str]) -> list[dict] | None:
    messages = record.fields[name]
    if not isinstance(messages, list) or not messages:
        errors.append(f"{record.where}: field '{name}' must be a non-empty list")
        return None
    if name == "conversations":
        messages = _from_sharegpt(record, messages, errors)
        if messages is None:
            return None
    elif not valid_messages(record, name, messages, errors):
        return None
    if messages[-1]["role"] != "assistant":
        errors.append(f"{record.where}: field '{name}' must end with an assistant message")
        return None
    # the answer the loss and exact match are about, refused empty as a flat record's is
    if not messages[-1]["content"].strip():
        key = "value" if name == "conversations" else "content"
        errors.append(f"{record.where}: field '{name}[{len(messages) - 1}].{key}' is empty")
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _from_sharegpt(record: Record, turns: list, errors: list[str]) -> list[dict] | None:
    """ShareGPT turns as messages; a tool call or observation turn is refused, not dropped."""
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES or not isinstance(turn.get("value"), str):
            errors.append(
                f"{record.where}: field 'conversations[{i}]' must be {{from: human|gpt|system, "
                f"value: string}}" + (f", not from '{speaker}'" if isinstance(speaker, str) else "")
            )
            return None
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return messages


def _flat(record: Record, errors: list[str], shape: str) -> list[dict] | None:
    """A prompt or Alpaca record, after its history's turns."""
    if shape == "Alpaca":
        instruction = string_field(record, "instruction", errors)
        extra = string_field(record, "input", errors, required=False)
        answer = string_field(record, "output", errors)
        prompt = (
            None
            if instruction is None
            else instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
        )
    else:
        prompt, answer = (
            string_field(record, "prompt", errors),
            string_field(record, "completion", errors),
        )
    history = record.fields.get("history")
    pairs = [] if history is None else history
    if not isinstance(pairs, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(t, str) for t in p)
        for p in pairs
    ):
        errors.append(
            f"{record.where}: field 'history' must be a list of [user, assistant] string pairs"
        )
        return None
    if prompt is None or answer is None:
        return None
    earlier = [
        {"role": r, "content": t} for pair in pairs for r, t in zip(("user", "assistant"), pair)
    ]
    return [*earlier, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
