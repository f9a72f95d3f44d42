"""FreezePlan: the plan language, as data.

A plan is an ordered list of rules, ``freeze SELECTOR`` or ``train SELECTOR``; later rules
win. If the first rule is ``train`` everything starts frozen, otherwise everything starts
trainable. Text form: rules separated by ``;`` or newlines (``#`` starts a comment line).
List form (YAML/JSON): ``["freeze bottom 75%", {"train": "mlp@layers 20-29"}]``.

Selectors::

    all
    bottom N | bottom N% | top N | top N%     N% of L blocks is floor(N*L/100) blocks;
                                              "bottom" also takes the input embeddings
    layers 0-21 | layers 3,5,7 | layers -8: | layers ::2
    embeddings | head | norm                  the parts outside the blocks
    attn | mlp | norms                        inside every block, or restricted by depth:
    mlp@layers 20-29 | attn@top 4 | norms@bottom 50%
    re:REGEX                                  re.fullmatch on full parameter names

Parsing checks the syntax only; whether a rule fits a model is ``resolve``'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from freezetune.errors import PlanError, missing_file, yaml_problem
from freezetune.plans.selectors import (
    ACTIONS,
    BLOCK_COMPONENTS,
    OUTER_COMPONENTS,
    All,
    Component,
    Depth,
    Layers,
    Regex,
    Rule,
    Selector,
)

PLAN_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".txt", ".plan")

_DEPTH = re.compile(r"(bottom|top)\s+(\d+)\s*(%?)", re.IGNORECASE)
_LAYERS = re.compile(r"layers\s+(.+)", re.IGNORECASE)
_SLICE = re.compile(r"(-?\d+)?:(-?\d+)?(?::(-?\d+)?)?")
_INDEX = re.compile(r"-?\d+")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


@dataclass(frozen=True)
class FreezePlan:
    rules: tuple[Rule, ...]

    @property
    def starts_frozen(self) -> bool:
        return self.rules[0].action == "train"

    def render(self) -> str:
        return "; ".join(rule.render() for rule in self.rules)

    def to_list(self) -> list[str]:
        return [rule.render() for rule in self.rules]

    @classmethod
    def parse(cls, text: str) -> FreezePlan:
        """Parse the text form; errors name the rule and its column (1-based)."""
        rules = []
        for piece, column in _split(text):
            rules.append(_parse_rule(piece, len(rules) + 1, column))
        if not rules:
            raise PlanError("empty plan: write at least one rule, e.g. 'freeze bottom 75%'")
        return cls(tuple(rules))

    @classmethod
    def from_list(cls, items: list, source: str = "plan") -> FreezePlan:
        """Parse the list form: strings, or one-key mappings {freeze|train: selector}."""
        if not isinstance(items, list):
            raise PlanError(f"{source}: expected a list of rules, got {type(items).__name__}")
        rules = []
        for number, item in enumerate(items, start=1):
            if isinstance(item, dict) and len(item) == 1:
                ((action, selector),) = item.items()
                item = f"{action} {selector}"
            if not isinstance(item, str):
                # a mapping of two keys is two rules in one item, as YAML reads `{train: a, freeze: b}`
                hint = (
                    "; a mapping takes one key, freeze or train" if isinstance(item, dict) else ""
                )
                raise PlanError(
                    f"{source}: rule {number} must be a string like 'freeze bottom 75%' or "
                    f"{{train: top 2}}, got {item!r}{hint}"
                )
            if "\n" in item.strip() or ";" in item:
                raise PlanError(
                    f"{source}: rule {number} '{item}' holds more than one rule; give one rule per item"
                )
            rules.append(_parse_rule(item.strip(), number, None))
        if not rules:
            raise PlanError(
                f"{source}: empty plan: write at least one rule, e.g. 'freeze bottom 75%'"
            )
        return cls(tuple(rules))

    @classmethod
    def from_argument(cls, value: str) -> FreezePlan:
        """A plan given on the command line: inline text, or the path of a plan file."""
        if value.lower().endswith(PLAN_FILE_SUFFIXES) and ";" not in value and "\n" not in value:
            return cls.load(Path(value))
        return cls.parse(value)

    @classmethod
    def load(cls, path: Path) -> FreezePlan:
        """Read a plan file: .yaml/.yml/.json hold a list (or {plan: ...}); other files hold text."""
        if not path.is_file():
            raise PlanError(missing_file("plan file", path))
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            return _with_source(lambda: cls.parse(text), path)
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"plan file {path}{yaml_problem(exc)}") from None
        except ValueError as exc:  # JSON's message gives the line and column
            first_line = str(exc).strip().splitlines()[0]
            raise PlanError(
                f"plan file {path}: not valid {path.suffix[1:].upper()}: {first_line}"
            ) from None
        if isinstance(data, dict) and set(data) == {"plan"}:
            data = data["plan"]
        if isinstance(data, str):
            return _with_source(lambda: cls.parse(data), path)
        return cls.from_list(data, source=f"plan file {path}")


def _with_source(parse, path: Path) -> FreezePlan:
    try:
        return parse()
    except PlanError as exc:
        raise PlanError(f"plan file {path}: {exc}") from None


def _split(text: str) -> list[tuple[str, int]]:
    """Rule pieces with the 1-based column of their first character in ``text``."""
    pieces, start = [], 0
    for end in [m.start() for m in re.finditer(r"[;\n]", text)] + [len(text)]:
        raw = text[start:end]
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            pieces.append((stripped, start + len(raw) - len(raw.lstrip()) + 1))
        start = end + 1
    return pieces


def _parse_rule(text: str, number: int, column: int | None) -> Rule:
    def fail(message: str) -> PlanError:
        return Rule("freeze", All(), number, text, column).error(message)

    action, _, rest = re.sub(r"\s", " ", text, count=1).partition(" ")
    if action.lower() not in ACTIONS:
        raise fail(f"a rule starts with 'freeze' or 'train', not '{action}'")
    rest = rest.strip()
    if not rest:
        raise fail(f"'{action}' needs a selector, e.g. '{action} bottom 75%'")
    joined = re.search(r"(,|\band\b|\bthen\b)\s*(freeze|train)\b", rest, re.IGNORECASE)
    if joined and rest[:3].lower() != "re:":  # "freeze bottom 75%, train top 1": two rules in one
        second = rest[joined.start(2) :]
        raise fail(
            f"two rules in one: separate them with ';' ('{action} {rest[: joined.start()].rstrip()}; {second}')"
        )
    try:
        selector = _parse_selector(rest)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return Rule(action.lower(), selector, number, text, column)


def _parse_selector(text: str) -> Selector:
    if text[:3].lower() == "re:":
        pattern = text[3:]
        if not pattern:
            raise ValueError("'re:' needs a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression '{pattern}': {exc}") from None
        return Regex(pattern)
    if text.lower() == "all":
        return All()
    if "@" in text:
        name, _, where_text = text.partition("@")
        name = name.strip().lower()
        if name in OUTER_COMPONENTS:
            raise ValueError(
                f"'{name}' lies outside the blocks, so it takes no '@' depth; write '{name}' alone"
            )
        if name not in BLOCK_COMPONENTS:
            raise ValueError(
                f"unknown component '{name}' before '@'; one of: {', '.join(BLOCK_COMPONENTS)}"
            )
        where = _parse_depth(where_text.strip())
        if where is None:
            raise ValueError(
                f"after '@' comes a depth like 'layers 20-29' or 'top 4', not '{where_text.strip()}'"
            )
        return Component(name, where)
    if text.lower() in OUTER_COMPONENTS + BLOCK_COMPONENTS:
        return Component(text.lower())
    depth = _parse_depth(text)
    if depth is not None:
        return depth
    known = "all, bottom N[%], top N[%], layers SPEC, " + ", ".join(
        OUTER_COMPONENTS + BLOCK_COMPONENTS
    )
    raise ValueError(
        f"unknown selector '{text}'; expected one of: {known}, COMPONENT@DEPTH, re:REGEX"
    )


def _parse_depth(text: str) -> Depth | Layers | None:
    match = _DEPTH.fullmatch(text)
    if match:
        end, count, percent = match.group(1).lower(), int(match.group(2)), bool(match.group(3))
        if count == 0:
            raise ValueError(f"'{text}' selects no blocks; use a count of at least 1")
        if percent and count > 100:
            raise ValueError(f"'{text}': a percentage is at most 100%")
        return Depth(end, count, percent)
    match = _LAYERS.fullmatch(text)
    if match:
        return _parse_layers(match.group(1).strip())
    return None


def _parse_layers(spec: str) -> Layers:
    if ":" in spec:
        match = _SLICE.fullmatch(spec.replace(" ", ""))
        if not match:
            raise ValueError(f"'layers {spec}' is not a Python slice like '-8:' or '::2'")
        start, stop, step = (None if v is None else int(v) for v in match.groups())
        if step == 0:
            raise ValueError(f"'layers {spec}': a slice step cannot be zero")
        return Layers(slice=(start, stop, step))
    items: list[int | tuple[int, int]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if _INDEX.fullmatch(item):
            items.append(int(item))
        elif _RANGE.fullmatch(item):
            low, high = (int(v) for v in _RANGE.fullmatch(item).groups())
            if low > high:
                raise ValueError(
                    f"'layers {spec}': range {low}-{high} runs backwards; write {high}-{low}"
                )
            items.append((low, high))
        else:
            raise ValueError(f"'layers {spec}': '{item}' is not an index or a range like 0-21")
    return Layers(items=tuple(items))
