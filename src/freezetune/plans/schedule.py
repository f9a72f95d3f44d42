"""Schedules: a trainable set that changes with the step, inside a plan.

    gradual every=N [start=K] [step=S]   the top K of the plan's trainable blocks train first; every N
                                         steps S more are unfrozen downward, until the whole plan trains
                                         (ULMFiT's gradual unfreezing)
    lisa layers=K every=T [sample=uniform|gradient] [freeze-outside]
                                         every T steps K of the plan's trainable blocks are drawn (seeded)
                                         to train, uniformly or in proportion to their gradient scores
                                         (refreshed from the steps taken); the parts outside the blocks train
                                         as the plan says (LISA), or, with freeze-outside, stay frozen

The plan is the universe: a phase only ever freezes more of it, never trains what the plan
freezes. Each phase is the plan plus one freeze rule, so it resolves, previews and renders like
any plan; gradual's rule is ``freeze bottom N``, which also keeps the embeddings (and a head tied
to them) out until the unfreezing reaches the plan's lowest block, so the backward pass stays
short. The phase of a step is a pure function of the step and the seed: a resumed run is in
the phase the uninterrupted run would be in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from freezetune.errors import FreezetuneError
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import ResolvedPlan, resolve
from freezetune.plans.selectors import Component, Depth, Layers, Rule, index_ranges

FORMS = (
    "'gradual every=N [start=K] [step=S]' or "
    "'lisa layers=K every=T [sample=uniform|gradient] [freeze-outside]'"
)
SAMPLES = ("uniform", "gradient")  # lisa's draws: equal chances, or by gradient score
FLAGS = {"lisa": {"freeze-outside"}, "gradual": set()}  # words without a value
KEYS = {
    "gradual": ({"every"}, {"every", "start", "step"}),
    "lisa": ({"layers", "every"}, {"layers", "every", "sample"}),
}


@dataclass(frozen=True)
class Schedule:
    kind: str  # "gradual" | "lisa"
    every: int
    start: int = 1  # gradual: blocks that train from step 0
    step: int = 1  # gradual: blocks unfrozen at each change
    layers: int = 0  # lisa: blocks drawn per period
    freeze_outside: bool = False  # lisa: the embeddings and head never train (OwLore's variant)
    sample: str = "uniform"  # lisa: "gradient" draws blocks in proportion to their gradient scores

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """The text form, or a one-line error that says what is wrong and what is expected."""
        words = text.split()
        if not words or words[0].lower() not in KEYS:
            raise FreezetuneError(
                f"--schedule '{text}': unknown schedule {words[0] if words else '(empty)'!r}; use {FORMS}"
            )
        kind = words[0].lower()
        required, allowed = KEYS[kind]
        values: dict = {}
        for word in words[1:]:
            named = word.partition("=")[0]
            # 'every=2 every=3': which was meant is not ours to guess
            if named.replace("-", "_") in values:
                raise FreezetuneError(f"--schedule '{text}': {named} is given twice")
            if word in FLAGS[kind]:
                values[word.replace("-", "_")] = True
                continue
            key, sep, value = word.partition("=")
            if key == "sample" and sep and kind == "lisa":
                if value not in SAMPLES:
                    raise FreezetuneError(
                        f"--schedule '{text}': sample must be uniform or gradient, got {value!r}"
                    )
                values["sample"] = value
                continue
            if not sep or key not in allowed:
                raise FreezetuneError(
                    f"--schedule '{text}': {word!r} is not one of {kind}'s settings "
                    f"({', '.join([*(f'{k}=N' for k in sorted(allowed) if k != 'sample'), *sorted(FLAGS[kind])])}"
                    f"{', sample=uniform|gradient' if kind == 'lisa' else ''})"
                )
            # '²' is a digit to str, not to int
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise FreezetuneError(
                    f"--schedule '{text}': {key} must be a whole number of at least 1, got {value!r}"
                )
            values[key] = int(value)
        missing = sorted(required - set(values))
        if missing:
            raise FreezetuneError(
                f"--schedule '{text}': {kind} needs {', '.join(f'{k}=N' for k in missing)}"
            )
        return cls(kind, **values)

    def render(self) -> str:
        if self.kind == "lisa":
            outside = " freeze-outside" if self.freeze_outside else ""
            sample = f" sample={self.sample}" if self.sample != "uniform" else ""
            return f"lisa layers={self.layers} every={self.every}{sample}{outside}"
        return f"gradual every={self.every} start={self.start} step={self.step}"

    def phase(self, step: int) -> int:
        """Which phase optimizer step ``step`` (0-based) trains in."""
        return step // self.every

    def check(self, universe: ResolvedPlan) -> list[int]:
        """The plan's trainable blocks (what the schedule moves through), or a one-line error."""
        blocks = trainable_blocks(universe)
        if not blocks:
            raise FreezetuneError(
                f"--schedule '{self.render()}': the plan '{universe.plan.render()}' trains no block, "
                "so there is nothing to schedule"
            )
        count = self.layers if self.kind == "lisa" else self.start
        name = "layers" if self.kind == "lisa" else "start"
        if count > len(blocks):
            raise FreezetuneError(
                f"--schedule '{self.render()}': {name}={count}, but the plan trains only "
                f"{len(blocks)} blocks"
            )
        # a schedule that cannot vary is the plan itself: say so rather than run it as if it did
        if count == len(blocks):
            nothing = (
                "to draw: every period" if self.kind == "lisa" else "to unfreeze: from step 0 it"
            )
            raise FreezetuneError(
                f"--schedule '{self.render()}': {name}={count} of the plan's {count} trainable blocks "
                f"leaves nothing {nothing} would train all {count}; give fewer, or a plan "
                "that trains more blocks"
            )
        if self.freeze_outside and not _outside(universe):
            raise FreezetuneError(
                f"--schedule '{self.render()}': the plan '{universe.plan.render()}' already trains "
                "neither the embeddings nor the head, so freeze-outside would change nothing"
            )
        return blocks

    def check_length(
        self, universe: ResolvedPlan, total_steps: int, more: str = "more steps"
    ) -> str | None:
        """A one-line error for a run too short to leave its first phase (the first phase's plan, run
        as if it varied), ending in ``more``; for gradual, a notice when the run ends before the
        whole plan trains."""
        periods = -(-total_steps // self.every)
        if periods < 2:
            shorter = f"every={total_steps - 1} or less, or " if total_steps > 1 else ""
            raise FreezetuneError(
                f"--schedule '{self.render()}': the run has {total_steps} step"
                f"{'s' if total_steps != 1 else ''}, so it never leaves its first phase "
                f"(every={self.every}) and trains the same blocks throughout; give {shorter}{more}"
            )
        if self.kind != "gradual" or self.complete(universe, periods - 1):
            return None
        never = [b for b in self.check(universe) if b not in self.active(universe, periods - 1, 0)]
        left = universe.trainable - self.plan_at(universe, periods - 1, 0).trainable
        parts = sorted({e.part for e in universe.anatomy.entries if e.tensor in left} - {"block"})
        named = [f"block{'s' if len(never) > 1 else ''} {index_ranges(never)}"]
        named += [f"the {part}" for part in parts]
        whole = (self._phases_to_complete(universe) - 1) * self.every + 1
        return (
            f"--schedule '{self.render()}': the run's "
            + (f"{total_steps} steps end" if total_steps != 1 else "1 step ends")
            + " before the unfreezing "
            f"reaches the plan's lowest block: {', '.join(named[:-1])}"
            f"{' and ' if len(named) > 1 else ''}{named[-1]} never "
            f"train{'s' if named == [f'block {never[0]}'] else ''} (the whole plan would "
            f"train from step {whole})"
        )

    def active(
        self, universe: ResolvedPlan, phase: int, seed: int, scores: dict | None = None
    ) -> list[int]:
        """The plan's blocks that train in ``phase``; ``scores`` (block -> gradient score) weigh a
        gradient-sampled draw, where a block not yet scored counts as the mean of those that are."""
        blocks = self.check(universe)
        # a generator of its own per period: the draw depends on nothing else (and the scores)
        if self.kind == "lisa" and self.sample == "gradient":
            rng = random.Random(f"lisa:{seed}:{phase}")
            known = [v for b, v in (scores or {}).items() if b in blocks and v > 0]
            prior = sum(known) / len(known) if known else 1.0
            weight = {b: max((scores or {}).get(b, prior), 1e-12) for b in blocks}
            # weighted sampling without replacement: the K largest u^(1/w) (Efraimidis and Spirakis)
            keys = {b: rng.random() ** (1.0 / weight[b]) for b in blocks}
            return sorted(sorted(blocks, key=lambda b: -keys[b])[: self.layers])
        if self.kind == "lisa":
            return sorted(random.Random(f"lisa:{seed}:{phase}").sample(blocks, self.layers))
        return blocks[-min(len(blocks), self.start + phase * self.step) :]

    def complete(self, universe: ResolvedPlan, phase: int) -> bool:
        """Gradual only: whether the unfreezing has reached the plan's lowest block by ``phase``."""
        return self.kind == "gradual" and self.start + phase * self.step >= len(
            self.check(universe)
        )

    def plan_at(
        self, universe: ResolvedPlan, phase: int, seed: int, scores: dict | None = None
    ) -> ResolvedPlan:
        """The resolved plan of ``phase``: the universe plus the one rule that freezes what rests."""
        active = self.active(universe, phase, seed, scores)
        if self.kind == "gradual":
            return (
                universe
                if self.complete(universe, phase)
                else _freezing(universe, Depth("bottom", active[0]))
            )
        return self.plan_for(universe, active)

    def plan_for(self, universe: ResolvedPlan, active: list[int]) -> ResolvedPlan:
        """LISA's plan when ``active`` are the blocks drawn."""
        resting = [b for b in self.check(universe) if b not in active]
        return _freezing(universe, Layers(items=tuple(resting)), self.freeze_outside)

    def phases(self, universe: ResolvedPlan, total_steps: int, seed: int) -> list[dict]:
        """Consecutive steps with the same blocks, as ``{"steps": [first, last], "blocks": [...], "resolved": ...}``;
        ``total_steps`` 0 lists gradual until it is complete and four LISA periods."""
        count = total_steps or (
            self.every * (4 if self.kind == "lisa" else self._phases_to_complete(universe))
        )
        if self.sample == "gradient":  # later draws follow gradients only training will see
            count = min(count, self.every)
        out: list[dict] = []
        for phase in range(-(-count // self.every)):
            first, last = phase * self.every, min(count, (phase + 1) * self.every) - 1
            blocks = self.active(universe, phase, seed)
            if out and out[-1]["blocks"] == blocks:
                out[-1]["steps"][1] = last
                continue
            out.append(
                {
                    "steps": [first, last],
                    "blocks": blocks,
                    "resolved": self.plan_at(universe, phase, seed),
                }
            )
        if not total_steps and self.kind == "gradual":
            out[-1]["steps"][1] = None  # the complete plan trains to the end of the run
        return out

    def _phases_to_complete(self, universe: ResolvedPlan) -> int:
        phase = 0
        while not self.complete(universe, phase):
            phase += 1
        return phase + 1

    def peak_plan(self, universe: ResolvedPlan) -> ResolvedPlan:
        """The phase that needs the most training memory: gradual's last (the whole plan); for LISA the
        draw with the plan's lowest block (the longest backward) and the largest others."""
        if self.kind == "gradual":
            return universe
        blocks = self.check(universe)
        sizes = {row["index"]: row["trainable_params"] for row in universe.layer_rows()}
        largest = sorted(blocks[1:], key=lambda b: (-sizes[b], b))[: self.layers - 1]
        resting = [b for b in blocks if b != blocks[0] and b not in largest]
        return _freezing(universe, Layers(items=tuple(resting)), self.freeze_outside)


def _outside(universe: ResolvedPlan) -> bool:
    """Whether the plan trains any of the embeddings or the head."""
    return any(
        e.part in ("embeddings", "head") and e.tensor in universe.trainable
        for e in universe.anatomy.entries
    )


def _freezing(
    universe: ResolvedPlan, selector: Depth | Layers, outside: bool = False
) -> ResolvedPlan:
    """The universe's plan with one more rule, ``freeze SELECTOR`` (none for an empty Layers), and
    with ``outside`` two more that freeze the embeddings and the head, resolved."""
    selectors = [selector] if not isinstance(selector, Layers) or selector.items else []
    selectors += [Component("embeddings"), Component("head")] if outside else []
    if not selectors:
        return universe
    start = len(universe.plan.rules) + 1
    rules = tuple(Rule("freeze", s, start + i) for i, s in enumerate(selectors))
    return resolve(FreezePlan(universe.plan.rules + rules), universe.anatomy)


def trainable_blocks(resolved: ResolvedPlan) -> list[int]:
    """Indices of the blocks with at least one trainable tensor, ascending."""
    return [row["index"] for row in resolved.layer_rows() if row["trainable_params"]]
