"""The words of a plan, as data: its selectors (all, bottom/top N, layers, a component, a regex) and
its rules (an action and a selector, with where the rule came from for error messages). Each
renders back to the text it was parsed from; language.py parses them, resolution.py applies them."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezetune.errors import PlanError

# peft's adapter matrices, nothing of the base model: a LoRA run's plan when none is given
ADAPTERS_ONLY = r"train re:.*\.lora_[AB]\..*"

ACTIONS = ("freeze", "train")
OUTER_COMPONENTS = ("embeddings", "head", "norm")
BLOCK_COMPONENTS = ("attn", "mlp", "norms")


@dataclass(frozen=True)
class All:
    def render(self) -> str:
        return "all"


@dataclass(frozen=True)
class Depth:
    """The bottom or top ``count`` blocks (``percent``: count is a percentage of the blocks)."""

    end: str  # "bottom" | "top"
    count: int
    percent: bool = False

    def render(self) -> str:
        return f"{self.end} {self.count}{'%' if self.percent else ''}"


@dataclass(frozen=True)
class Layers:
    """Block indices: a list of indices and inclusive ranges, or one Python slice."""

    items: tuple[int | tuple[int, int], ...] = ()
    slice: tuple[int | None, int | None, int | None] | None = None

    def render(self) -> str:
        if self.slice is not None:
            start, stop, step = ("" if v is None else str(v) for v in self.slice)
            return f"layers {start}:{stop}" + (f":{step}" if step else "")
        parts = [f"{i[0]}-{i[1]}" if isinstance(i, tuple) else str(i) for i in self.items]
        return "layers " + ",".join(parts)


def index_ranges(indices: list[int]) -> str:
    """Ascending block indices as a plan would write them: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


@dataclass(frozen=True)
class Component:
    name: str  # one of OUTER_COMPONENTS or BLOCK_COMPONENTS
    where: Depth | Layers | None = None

    def render(self) -> str:
        if self.where is None:
            return self.name
        return f"{self.name}@{self.where.render()}"


@dataclass(frozen=True)
class Regex:
    pattern: str

    def render(self) -> str:
        return f"re:{self.pattern}"


Selector = All | Depth | Layers | Component | Regex


@dataclass(frozen=True)
class Rule:
    action: str  # "freeze" | "train"
    selector: Selector
    # where the rule came from, for error messages; not part of the rule's identity
    number: int = field(default=0, compare=False)
    text: str = field(default="", compare=False)
    column: int | None = field(default=None, compare=False)

    def render(self) -> str:
        return f"{self.action} {self.selector.render()}"

    def where(self) -> str:
        at = f" at column {self.column}" if self.column is not None else ""
        return f"plan rule {self.number} '{self.text or self.render()}'{at}"

    def error(self, message: str) -> PlanError:
        return PlanError(f"{self.where()}: {message}")
