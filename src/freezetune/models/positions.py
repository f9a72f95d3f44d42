"""How many positions a model was trained on, and whether a longer sequence can run at all: a
table of learned position embeddings (GPT-2's wpe) has one row per position and fails with an
IndexError past its end; rotary or ALiBi positions run on, untrained."""

from __future__ import annotations

import torch

from freezetune.errors import FreezetuneError


def position_limit(model) -> tuple[int | None, bool]:
    """(the model's positions, whether they are a learned table), or (None, False) where unknown."""
    limit = getattr(model.config, "max_position_embeddings", None)  # GPT-2's n_positions maps to it
    if not isinstance(limit, int) or isinstance(limit, bool):
        return None, False
    vocab = getattr(model.config, "vocab_size", None)
    # OPT's table keeps 2 rows more than its positions
    learned = any(
        isinstance(module, torch.nn.Embedding)
        and module.num_embeddings in (limit, limit + 2)
        and module.num_embeddings != vocab
        for module in model.modules()
    )
    return limit, learned


def check_seq_len(model, seq_len: int, name: str) -> str | None:
    """Refuses a --seq-len past a learned position table; past rotary positions, a notice."""
    limit, learned = position_limit(model)
    if limit is None or seq_len <= limit:
        return None
    if learned:
        raise FreezetuneError(
            f"--seq-len {seq_len} is beyond the {limit} positions of {name}: its position embeddings "
            f"are learned, one per position, so a longer sequence cannot run; give --seq-len {limit} or less"
        )
    return (
        f"notice: --seq-len {seq_len} is beyond the {limit} positions {name} was trained on "
        "(max_position_embeddings): a sequence longer than that runs on positions it never saw"
    )


def check_generation_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt and its answer within a learned position table, where generate would fail."""
    limit, learned = position_limit(model)
    if limit is None or not learned or prompt_tokens + max_new_tokens <= limit:
        return
    room = limit - prompt_tokens
    raise FreezetuneError(
        f"--max-new-tokens {max_new_tokens}: a prompt of {prompt_tokens} tokens and {max_new_tokens} new "
        f"ones pass the model's {limit} learned positions; "
        + (f"give --max-new-tokens {room} or less" if room > 0 else "give a shorter prompt")
    )
