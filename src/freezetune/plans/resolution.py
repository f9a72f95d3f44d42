"""resolve(plan, anatomy) -> ResolvedPlan, and apply_plan(model, resolved).

Resolution is a pure function: it reads the plan and the anatomy and names the trainable
tensors. Layer indices are compared as integers taken from the block list's own position,
never as substrings of parameter names, so layer 2 never matches ``experts.2`` or layer 22.

Tied weights: one tensor has several names (embeddings and head). A tied tensor follows the
last rule that names *any* of its names, and a notice says so whenever that rule did not
name all of them (``freeze bottom 75%`` freezes the embeddings and so the tied head too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import Anatomy, Entry
from freezetune.plans.language import FreezePlan
from freezetune.plans.selectors import ADAPTERS_ONLY, All, Component, Depth, Layers, Regex, Rule

# any tensor peft's LoRA adds (A, B, embedding A/B, DoRA magnitude)
ADAPTER = re.compile(r"\.lora_")


@dataclass(frozen=True)
class ResolvedPlan:
    plan: FreezePlan
    anatomy: Anatomy
    trainable: frozenset[str]  # canonical tensor names
    notices: tuple[str, ...] = ()

    @property
    def total_params(self) -> int:
        return self.anatomy.total_params

    @property
    def trainable_params(self) -> int:
        return sum(n for t, n in self.anatomy.tensors.items() if t in self.trainable)

    def is_trainable(self, entry: Entry) -> bool:
        return entry.tensor in self.trainable

    def trainable_names(self) -> list[str]:
        """Canonical names of the trainable tensors, in registration order."""
        return [t for t in self.anatomy.tensors if t in self.trainable]

    def layer_rows(self) -> list[dict]:
        rows = [
            {"index": i, "params": 0, "trainable_params": 0} for i in range(self.anatomy.num_layers)
        ]
        for entry in self.anatomy.entries:
            if entry.part == "block" and entry.name == entry.tensor:
                rows[entry.layer]["params"] += entry.numel
                rows[entry.layer]["trainable_params"] += (
                    entry.numel if self.is_trainable(entry) else 0
                )
        for row in rows:
            row["state"] = _state(row["trainable_params"], row["params"])
        return rows

    def part_rows(self) -> list[dict]:
        """The parts outside the blocks; a tied tensor is listed under each part it belongs to."""
        rows = []
        for part in ("embeddings", "norm", "head"):
            entries = [e for e in self.anatomy.entries if e.part == part]
            if not entries:
                continue
            params = sum(e.numel for e in entries)
            trainable = sum(e.numel for e in entries if self.is_trainable(e))
            here = {e.name for e in entries}
            tied = sorted(
                {a for e in entries for a in self.anatomy.aliases(e.tensor) if a not in here}
            )
            rows.append(
                {
                    "part": part,
                    "params": params,
                    "trainable_params": trainable,
                    "state": _state(trainable, params),
                    "tied_to": tied,
                    "names": [e.name for e in entries],
                }
            )
        return rows

    @property
    def lowest_trainable_layer(self) -> int | None:
        layers = [
            e.layer for e in self.anatomy.entries if e.part == "block" and self.is_trainable(e)
        ]
        return min(layers) if layers else None

    @property
    def embeddings_trainable(self) -> bool:
        return any(self.is_trainable(e) for e in self.anatomy.entries if e.part == "embeddings")

    @property
    def backward_depth(self) -> int:
        """How many blocks the backward pass must run through (from the top)."""
        if self.embeddings_trainable:
            return self.anatomy.num_layers
        lowest = self.lowest_trainable_layer
        return 0 if lowest is None else self.anatomy.num_layers - lowest


def _state(trainable: int, total: int) -> str:
    if trainable == 0:
        return "frozen"
    return "trainable" if trainable == total else "partial"


def block_indices(where: Depth | Layers, num_layers: int, rule: Rule) -> list[int]:
    """The block indices a depth selector names on a model with ``num_layers`` blocks."""
    if isinstance(where, Depth):
        count = where.count * num_layers // 100 if where.percent else where.count
        if where.percent and count == 0:
            raise rule.error(
                f"{where.render()} of {num_layers} blocks is 0 blocks; use a larger percentage"
            )
        if count > num_layers:
            raise rule.error(
                f"{where.end} {count}: out of range, the model has {num_layers} blocks"
            )
        return (
            list(range(count))
            if where.end == "bottom"
            else list(range(num_layers - count, num_layers))
        )
    if where.slice is not None:
        indices = list(range(num_layers))[slice(*where.slice)]
        if not indices:
            raise rule.error(
                f"'{where.render()}' selects no blocks of {num_layers} (0-{num_layers - 1})"
            )
        return indices
    indices: list[int] = []
    for item in where.items:
        low, high = item if isinstance(item, tuple) else (item, item)
        for index in (low, high):
            if not -num_layers <= index < num_layers:
                raise rule.error(
                    f"layer {index} is out of range: the model has {num_layers} blocks (0-{num_layers - 1})"
                )
        indices.extend(range(low % num_layers, high % num_layers + 1))
    return sorted(set(indices))


def select(rule: Rule, anatomy: Anatomy) -> list[Entry]:
    """The entries (parameter names) a rule's selector matches; an error if none."""
    selector = rule.selector
    entries = anatomy.entries
    if isinstance(selector, All):
        matched = list(entries)
    elif isinstance(selector, Regex):
        pattern = re.compile(selector.pattern)
        matched = [e for e in entries if pattern.fullmatch(e.name)]
    else:
        matched = _select_structural(rule, anatomy)
    if not matched and isinstance(selector, Regex):
        # re: matches whole names, where Axolotl's and LLaMA-Factory's patterns match a part
        inside = [e.name for e in entries if re.search(selector.pattern, e.name)]
        if inside:
            raise rule.error(
                f"matches no whole parameter name of {anatomy.model_class}, and is part of "
                f"{len(inside)} (e.g. {inside[0]}); re: matches whole names: "
                f"write re:.*{selector.pattern}.*"
            )
    if not matched:
        raise rule.error(f"matches no parameter of {anatomy.model_class}")
    return matched


def _select_structural(rule: Rule, anatomy: Anatomy) -> list[Entry]:
    selector = rule.selector
    component = selector.name if isinstance(selector, Component) else None
    if component in ("embeddings", "head", "norm"):
        return [e for e in anatomy.entries if e.part == component]
    if anatomy.num_layers == 0:
        raise rule.error(
            f"cannot find the transformer blocks of {anatomy.model_class} (no nn.ModuleList of identical "
            "modules); select its parameters by name with 're:REGEX' rules instead"
        )
    where = selector.where if isinstance(selector, Component) else selector
    layers = set(block_indices(where, anatomy.num_layers, rule)) if where is not None else None
    role = {"attn": "attn", "mlp": "mlp", "norms": "norm"}.get(component)
    matched = [
        e
        for e in anatomy.entries
        if e.part == "block"
        and (layers is None or e.layer in layers)
        and (role is None or e.role == role)
    ]
    if isinstance(selector, Depth) and selector.end == "bottom":
        # the input embeddings sit below block 0, so a frozen bottom includes them
        matched = [e for e in anatomy.entries if e.part == "embeddings"] + matched
    return matched


def resolve(plan: FreezePlan, anatomy: Anatomy) -> ResolvedPlan:
    """Run the rules in order over every tensor and return who trains."""
    trainable = {tensor: not plan.starts_frozen for tensor in anatomy.tensors}
    decided_by: dict[str, tuple[Rule, set[str]]] = {}
    for rule in plan.rules:
        matched = select(rule, anatomy)
        by_tensor: dict[str, set[str]] = {}
        for entry in matched:
            by_tensor.setdefault(entry.tensor, set()).add(entry.name)
        for tensor, names in by_tensor.items():
            trainable[tensor] = rule.action == "train"
            decided_by[tensor] = (rule, names)
    chosen = frozenset(t for t, on in trainable.items() if on)
    if not chosen:
        raise plan.rules[-1].error("the plan leaves nothing trainable")
    notices = [*_tied_notices(anatomy, chosen, decided_by), *_adapter_notices(anatomy, chosen)]
    return ResolvedPlan(plan, anatomy, chosen, tuple(notices))


def _tied_notices(anatomy: Anatomy, chosen: frozenset[str], decided_by: dict) -> list[str]:
    notices = []
    for names in anatomy.tied_groups():
        tensor = names[0]
        if tensor not in decided_by:
            continue
        rule, named = decided_by[tensor]
        others = [n for n in names if n not in named]
        if others:
            state = "trainable" if tensor in chosen else "frozen"
            notices.append(
                f"{' and '.join(names)} are one tied tensor; {rule.where()} names only "
                f"{', '.join(sorted(named))}, so {', '.join(others)} is {state} too"
            )
    return notices


def _adapter_notices(anatomy: Anatomy, chosen: frozenset[str]) -> list[str]:
    """A plan over a model with LoRA adapters that trains base tensors too: 'freeze bottom 50%' on a
    peft model trains the top blocks' own weights beside their adapters, which few who write it mean."""
    if not any(ADAPTER.search(t) for t in anatomy.tensors):
        return []
    base = [t for t in anatomy.tensors if t in chosen and not ADAPTER.search(t)]
    if not base:
        return []
    params = sum(anatomy.tensors[t] for t in base)
    return [
        f"the model has LoRA adapters, and the plan also trains {len(base)} of the base model's own "
        f"tensors ({params:,} parameters, the first {base[0]}); the adapters alone are "
        f"'{ADAPTERS_ONLY}'"
    ]


def apply_plan(model: nn.Module, resolved: ResolvedPlan) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` as the plan says (idempotent)."""
    names = {name: param for name, param in model.named_parameters(remove_duplicate=False)}
    expected = {e.name for e in resolved.anatomy.entries}
    if set(names) != expected:
        missing = sorted(expected - set(names))[:3] or sorted(set(names) - expected)[:3]
        raise FreezetuneError(
            f"the plan was resolved on a different model ({resolved.anatomy.model_class}); "
            f"parameter names differ, e.g. {', '.join(missing)}"
        )
    canonical = {e.name: e.tensor for e in resolved.anatomy.entries}
    for name, param in names.items():
        param.requires_grad_(canonical[name] in resolved.trainable)
