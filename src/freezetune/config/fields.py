"""The field every option is declared with (its help is also the flag's --help), and byte sizes."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field

from freezetune.errors import FreezetuneError

FLOAT32_MAX = 3.4028234663852886e38


def opt(
    default=dataclasses.MISSING,
    *,
    help: str,
    choices=None,
    positional: bool = False,
    const=None,
    metavar: str | None = None,
    once: str | None = None,
):
    """``const``: the flag may be given without a value, and then takes this one (`--pilot`);
    ``once``: typed twice, the flag is refused with this hint, where a second value reads as
    "and this too" (`--data a --data b`), not as an override."""
    return field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "positional": positional,
            "const": const,
            "metavar": metavar,
            "once": once,
        },
    )


SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def flag_of(name: str) -> str:
    """The command-line flag of an option field: seq_len -> --seq-len."""
    return "--" + name.replace("_", "-")


def parse_size(text: str, flag: str) -> int:
    """'8GiB', '512 MiB', '2e9'... as bytes, or a one-line error naming the flag."""
    match = SIZE.fullmatch(text)
    if match is None:
        try:
            return int(float(text))
        except ValueError:
            raise FreezetuneError(
                f"{flag} '{text}': expected a size such as 8GiB, 512MiB or 2e9 (bytes)"
            ) from None
    return int(float(match.group(1)) * UNITS[(match.group(2) or "b").lower()])


def check_not_blank(options, allowed: tuple[str, ...] = ("prompt", "system")) -> None:
    """No empty path, plan or name: `--data "$DATA"` with DATA unset trained on the built-in task,
    and `compare --out ''` took the current folder for its own. An empty prompt is text."""
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if item.name in allowed or not any(
            isinstance(v, str) and not v.strip()
            for v in (value if isinstance(value, list) else [value])
        ):
            continue
        name = item.name.upper() if item.metadata.get("positional") else flag_of(item.name)
        optional = (
            item.default is not dataclasses.MISSING
            or item.default_factory is not dataclasses.MISSING
        )
        or_default = ", or drop the flag for its default" if optional else ""
        raise FreezetuneError(f"{name} is empty: give a value{or_default}")


SEED_LIMIT = 2**32 - 1  # numpy's generator takes no other seed (torch's takes more)


def check_seed(seed: int | None, count: int = 1) -> None:
    """A seed every generator a run seeds can take: -1 was a numpy traceback at the run's start.
    ``count``: compare's --seeds, the seeds --seed, --seed + 1, ... that its runs take."""
    if seed is not None and not 0 <= seed <= SEED_LIMIT:
        raise FreezetuneError(f"--seed must be between 0 and {SEED_LIMIT}, got {seed}")
    if seed is not None and seed + count - 1 > SEED_LIMIT:
        raise FreezetuneError(
            f"--seed {seed} with --seeds {count} runs seeds past the largest, {SEED_LIMIT}"
        )


def check_finite(options) -> None:
    """Every float option a finite number: nan or inf would train (or search) nonsense, not fail."""
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise FreezetuneError(f"{flag_of(item.name)} must be a finite number, got {value}")
        # torch keeps rates and norms as float32 tensors
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise FreezetuneError(
                f"{flag_of(item.name)} {value:g} is beyond the largest float32 "
                f"({FLOAT32_MAX:.3g}); give a smaller number"
            )


def check_choices(options) -> None:
    """Every option with choices one of them: argparse and config files check, a library caller may not."""
    for item in dataclasses.fields(options):
        value, choices = getattr(options, item.name), item.metadata.get("choices")
        if choices and value is not None and value not in choices:  # None: an optional left unset
            shown = ", ".join(map(str, choices))
            raise FreezetuneError(f"{flag_of(item.name)} must be one of {shown}, got {value!r}")
