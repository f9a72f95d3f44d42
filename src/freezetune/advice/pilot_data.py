"""What every pilot run trains on and is scored on: the training rows, a validation split held out
of them, the retain set with the base's distributions on it, and the cache of the base's frozen
prefix outputs that all pilots share."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezetune.data.examples import Example
from freezetune.errors import FreezetuneError
from freezetune.options.advise import VALIDATION
from freezetune.training.prefix_cache import PrefixCache

EVAL_BATCH = 16  # no autograd: larger batches than training's


@dataclass
class PilotData:
    """What every pilot trains and is scored on; the same for all of them."""

    train: list[Example]
    validation: list[Example]
    retain: list[Example]
    reference: dict  # the base's distributions on the retain set (comparison/forgetting.py)
    pad_id: int
    batch_size: int
    cache: PrefixCache = field(default_factory=PrefixCache)  # the base's prefix outputs, per depth


def hold_out(train, count: int | None = None) -> tuple[list[Example], list[Example]]:
    """(train, validation) examples: ``count`` of ``train`` (TokenizedData) held out, seeded as `compare`
    does; by default VALIDATION, at most a quarter of the data."""
    from freezetune.data.examples import split_holdout
    from freezetune.data.loading import SPLIT_SEED

    count = count or max(2, min(VALIDATION, train.units // 4))
    if train.units < 2 * count:
        raise FreezetuneError(
            f"--data has {train.units} training examples: too few to hold out --validation {count} "
            "for the pilots and train on the rest (lower --validation, or --no-pilot)"
        )
    kept, held = split_holdout(train, 0.0, SPLIT_SEED, count=count)
    return kept.examples, held.examples


def pilot_data(
    loaded, train, validation, retain: str | None, batch_size: int, seq_len: int
) -> PilotData:
    """The pilots' data: the retain set (``retain``, else compare's default: the base's own answers to
    general prompts) with the base's distributions on it, for the KL."""
    from freezetune.comparison.forgetting import base_distributions, build_retain
    from freezetune.data.examples import pad_token_id

    device = next(loaded.model.parameters()).device
    pad = pad_token_id(loaded.tokenizer)
    kept = build_retain(loaded.model, loaded.tokenizer, seq_len, device, retain)
    reference = base_distributions(loaded.model, kept, EVAL_BATCH, pad, device)
    return PilotData(train, validation, kept, reference, pad, batch_size)
