"""compare's strategies: 'full', 'lora ...', a schedule over a plan, 'advise', or any freeze plan,
each parsed once from the text the user gave (the checks use the parsed plan; the workers get its
text, a worker being another process)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from freezetune.config.fields import parse_size
from freezetune.config.run import LORA_PLAN
from freezetune.errors import FreezetuneError
from freezetune.options.advise import PILOT_STEPS, parse_budget
from freezetune.plans.language import FreezePlan
from freezetune.plans.schedule import Schedule

DEFAULT_STRATEGIES = ["full", "lora", "freeze bottom 75%", "freeze bottom 50%"]
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3, "plan": 2e-4}  # the centre of each kind's search
KIND_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "plan": "a freeze plan or schedule"}
LR_GRID = "0.25,1,4"  # the search's rates by default, as multiples of the centre
LORA_WORDS = {"r": "lora_r", "alpha": "lora_alpha", "targets": "lora_targets"}


@dataclass(frozen=True)
class Strategy:
    name: str  # as the user wrote it: "full", "lora r=16", or a plan
    kind: str  # "full" | "lora" | "plan"
    plan: str
    lora: dict = field(default_factory=dict)
    lr: float | None = None  # given as lr=X inside the strategy: no search
    advise: bool = False  # the plan is `freezetune advise`'s pick, made when the model is loaded
    budget: int | None = None  # advise's memory budget (None: half of full fine-tuning's estimate)
    pilot: tuple | None = None  # advise's pilot budget as (steps, seconds); None: evidence only
    schedule: Schedule | None = None  # gradual or LISA (plans/schedule.py), inside ``plan``
    # ``plan`` parsed, once: the checks use it, the workers get its text
    rules: FreezePlan | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:60] or "strategy"


def _take_rate(text: str) -> tuple[str, float | None]:
    """A trailing 'lr=X' fixes the strategy's learning rate (and skips its search)."""
    match = re.search(r"\s+lr=(\S*)\s*$", text)
    if not match:
        return text, None
    try:
        rate = float(match.group(1))
    except ValueError:
        rate = -1.0
    if not 0 < rate < float("inf"):
        raise FreezetuneError(
            f"--strategy '{text.strip()}': lr must be a positive number, not '{match.group(1)}'"
        )
    return text[: match.start()], rate


def parse_strategy(text: str) -> Strategy:
    """'full', 'lora [r=N] [alpha=N] [targets=a,b]', a schedule ('gradual ...' or 'lisa ...', over 'train all'
    or 'over PLAN'), or any plan (checked against the model later); any of them may end in 'lr=X'."""
    name = text.strip()
    text, rate = _take_rate(text)
    words = text.split()
    if not words:
        raise FreezetuneError("empty --strategy")
    if words[0] in ("gradual", "lisa"):
        schedule, _, plan = text.partition(" over ")
        try:
            schedule, rules = (
                Schedule.parse(schedule.strip()),
                FreezePlan.parse(plan.strip() or "train all"),
            )
        except FreezetuneError as exc:
            raise FreezetuneError(f"--strategy '{name}': {exc}") from None
        return Strategy(
            name, "plan", plan.strip() or "train all", lr=rate, schedule=schedule, rules=rules
        )
    if text.strip() == "full":
        return Strategy(name, "full", "train all", lr=rate, rules=FreezePlan.parse("train all"))
    if words[0] == "advise":
        budget, pilot, given = None, parse_budget(PILOT_STEPS, "pilot"), set()
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key not in ("budget", "pilot") or not value:
                raise FreezetuneError(
                    f"--strategy '{name}': expected budget=SIZE (e.g. budget=8GiB) or pilot=STEPS|TIME|none "
                    f"(e.g. pilot=80, pilot=5min) after 'advise', not '{word}'"
                )
            if key in given:  # which of the two was meant is not ours to guess
                raise FreezetuneError(f"--strategy '{name}': {key} is given twice")
            given.add(key)
            if key == "budget":
                budget = parse_size(value, f"--strategy '{name}': budget")
            else:
                pilot = (
                    None if value == "none" else parse_budget(value, f"--strategy '{name}': pilot")
                )
        return Strategy(name, "plan", "", lr=rate, advise=True, budget=budget, pilot=pilot)
    if words[0] == "lora":
        lora, given = {"lora_r": 8}, set()
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key not in LORA_WORDS or not value:
                raise FreezetuneError(
                    f"--strategy '{text}': expected r=N, alpha=N or targets=a,b after 'lora', not '{word}'"
                )
            # '²' is a digit to str, not to int
            if key != "targets" and not (value.isascii() and value.isdigit()):
                raise FreezetuneError(
                    f"--strategy '{text}': {key} must be a whole number, not '{value}'"
                )
            # r=0 is no adapter: every search run failed on "matches no parameter"
            if key != "targets" and int(value) < 1:
                raise FreezetuneError(f"--strategy '{text}': {key} must be at least 1, not {value}")
            if key in given:  # which of the two was meant is not ours to guess
                raise FreezetuneError(f"--strategy '{text}': {key} is given twice")
            given.add(key)
            lora[LORA_WORDS[key]] = value if key == "targets" else int(value)
        return Strategy(name, "lora", LORA_PLAN, lora, rate)
    if (
        words[0] not in ("freeze", "train")
        and not text.lstrip().startswith(("-", "[", "{"))
        and "\n" not in text
        and not text.endswith((".yaml", ".yml", ".json", ".txt"))
    ):
        raise FreezetuneError(
            f"unknown strategy '{text.strip()}': use full, lora [r=N alpha=N targets=a,b], "
            "advise [budget=SIZE], or a freeze plan (its rules start with freeze or train)"
        )
    rules = FreezePlan.parse(text)  # a malformed plan fails here, before anything trains
    return Strategy(name, "plan", text.strip(), lr=rate, rules=rules)
