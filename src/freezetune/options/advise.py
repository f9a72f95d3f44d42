"""The options of `advise`: the evidence, the memory budget, and the pilot runs that check it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from freezetune.config.fields import flag_of, opt, parse_size
from freezetune.errors import FreezetuneError
from freezetune.options.commands import MODEL_HELP, check_sizes
from freezetune.plans.memory import DTYPES

VALIDATION = 32  # the pilots' default validation split
PILOT_STEPS = "80"  # advise's default pilot budget, in optimizer steps over all pilots
BUDGET = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(steps?|min|s)?\s*", re.IGNORECASE)


def parse_budget(text: str, flag: str) -> tuple[int | None, float | None]:
    """'80' or '80 steps' -> (80, None); '5min' -> (None, 300.0); '90s' -> (None, 90.0)."""
    match = BUDGET.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise FreezetuneError(
            f"{flag} '{text}': expected a positive budget such as 80 (steps), 5min or 90s"
        )
    unit = (match.group(2) or "steps").lower()
    if unit.startswith("step"):
        if not match.group(1).isdigit():
            raise FreezetuneError(f"{flag} '{text}': a budget in steps is a whole number")
        return int(match.group(1)), None
    return None, float(match.group(1)) * (60 if unit == "min" else 1)


@dataclass
class AdviseOptions:
    """Propose which layers to train from evidence (weight spectra, gradients on your data) within a memory budget."""

    model: str = opt(help=MODEL_HELP, positional=True)
    data: str | None = opt(
        None,
        help="your training data: adds a gradient probe (a few batches, no weight moves)",
        once="the probe reads one data file: join the files into one",
    )
    objective: str = opt(
        "sft",
        help="how --data is read: sft (prompt/response) or cpt (raw text)",
        choices=("sft", "cpt"),
    )
    memory_budget: str | None = opt(
        None,
        help="the largest training-memory estimate to accept, e.g. 8GiB (default: half "
        "of full fine-tuning's estimate)",
    )
    seq_len: int = opt(
        512, help="sequence length for the memory estimates (and the probe's truncation)"
    )
    batch_size: int = opt(4, help="micro-batch size for the memory estimates and the probe")
    dtype: str = opt("float32", help="training precision for the memory estimates", choices=DTYPES)
    pilot: str | None = opt(
        None,
        const=PILOT_STEPS,
        metavar="BUDGET",
        help="pilot runs (the default with --data; without it they train on the built-in task, as train "
        "does): the strongest candidates train briefly on the data "
        "and are scored on validation loss and KL from the base, by successive halving within BUDGET: "
        f"optimizer steps over all pilots (e.g. {PILOT_STEPS}, the default) or time (e.g. 5min, 90s)",
    )
    no_pilot: bool = opt(False, help="evidence only: no pilot runs even with --data")
    prefer: str = opt(
        "balanced",
        choices=("quality", "forgetting", "balanced"),
        help="the pick among the pilots: quality (lowest validation loss), forgetting (lowest KL from "
        "the base among those that measurably learned) or balanced (lowest KL among those within noise "
        "of the best validation loss); ties within noise go to the cheapest",
    )
    retain: str | None = opt(
        None,
        help="text the pilots' KL from the base is measured on, as in compare (default: the base's own "
        "answers to general prompts)",
    )
    lr: float | None = opt(
        None,
        help="the pilots' learning rate (default: searched as compare does, on the best-evidenced pilot)",
    )
    validation: int | None = opt(
        None,
        help=f"training examples held out to score the pilots on (default {VALIDATION}, at most a "
        "quarter of --data)",
    )
    pilot_candidates: int = opt(6, help="candidates in the pilots' first round")
    json: bool = opt(False, help="print one JSON object instead of the tables")
    cache_dir: str | None = opt(None, help="where converted GGUF models are cached")

    def validate(self) -> None:
        check_sizes(self)
        if self.memory_budget is not None and self.budget_bytes() <= 0:
            raise FreezetuneError(f"--memory-budget must be positive, got {self.memory_budget}")
        if self.pilot is not None and self.no_pilot:
            raise FreezetuneError("--pilot and --no-pilot contradict each other: give one")
        if self.lr is not None and self.lr <= 0:
            raise FreezetuneError(f"--lr must be positive, got {self.lr}")
        if self.validation is not None and self.validation < 2:
            raise FreezetuneError(f"--validation must be at least 2, got {self.validation}")
        if self.pilot_candidates < 1:
            raise FreezetuneError(
                f"--pilot-candidates must be at least 1, got {self.pilot_candidates}"
            )

    def check_given(self, given: set[str]) -> None:
        """Pilot options typed where no pilot runs (even at their default values)."""
        pilot_only = ("lr", "retain", "validation", "prefer", "pilot_candidates")
        chosen = [flag_of(name) for name in pilot_only if name in given]
        if chosen and self.pilot_budget() is None:
            why = "--no-pilot" if self.no_pilot else "without --data, only --pilot runs them"
            raise FreezetuneError(
                f"{', '.join(chosen)} {'is' if len(chosen) == 1 else 'are'} for the pilot runs, "
                f"and none run ({why})"
            )

    def pilot_budget(self) -> tuple[int | None, float | None] | None:
        """(steps, seconds) the pilots may spend, or None when no pilot runs."""
        if self.no_pilot or (self.pilot is None and not self.data):
            return None
        return parse_budget(self.pilot or PILOT_STEPS, "--pilot")

    def budget_bytes(self) -> int | None:
        return (
            parse_size(self.memory_budget, "--memory-budget")
            if self.memory_budget is not None
            else None
        )
