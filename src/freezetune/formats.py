"""Emit a resolved plan in the formats other tools read, or say why it cannot be expressed.

Each emitter simulates how the other tool matches names and checks that it would train
exactly the same tensors; a format that would train something else is refused, never
emitted approximately.

- Axolotl ``unfrozen_parameters``: regexes applied with ``re.match`` after Axolotl escapes
  every ``.``; we emit one anchored exact name per trainable tensor.
- LLaMA-Factory ``finetuning_type: freeze``: a contiguous run of top (+N) or bottom (-N)
  layers, module names inside them, and extra non-layer modules, all matched as substrings.
"""

from __future__ import annotations

import re

import yaml

from freezetune.errors import FreezetuneError
from freezetune.resolve import ResolvedPlan

FORMATS = ("axolotl", "llama-factory")


def _canonical_names(resolved: ResolvedPlan) -> list[str]:
    # both tools iterate model.named_parameters(), which lists a tied tensor once
    return list(resolved.anatomy.tensors)


def to_axolotl(resolved: ResolvedPlan) -> str:
    patterns = [f"^{name}$" for name in resolved.trainable_names()]
    compiled = [re.compile(p.replace(".", "\\.")) for p in patterns]
    selected = {n for n in _canonical_names(resolved) if any(c.match(n) for c in compiled)}
    _check("Axolotl", selected, resolved)
    return yaml.safe_dump({"unfrozen_parameters": patterns}, sort_keys=False)


def _llama_factory_select(names: list[str], num_layers: int, layers: int, modules: list[str], extras: list[str]):
    """LLaMA-Factory's freeze selection, as its adapter code does it (substring matching)."""
    ids = range(max(0, num_layers - layers), num_layers) if layers > 0 else range(min(-layers, num_layers))
    hidden, non_hidden = set(), set()
    for name in names:
        if ".0." in name:
            hidden.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:
            hidden.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            non_hidden.add(name.split(".")[-2])
    substrings = []
    for module in modules:
        if module != "all" and module not in hidden:
            return None
        substrings += [f".{i}.{'' if module == 'all' else module}" for i in ids]
    for module in extras:
        if module not in non_hidden:
            return None
        substrings.append(module)
    return {n for n in names if any(s in n for s in substrings)}


def to_llama_factory(resolved: ResolvedPlan) -> str:
    anatomy = resolved.anatomy
    layer_rows = resolved.layer_rows()
    trained = [r["index"] for r in layer_rows if r["trainable_params"]]
    count, top_run = len(trained), list(range(anatomy.num_layers - len(trained), anatomy.num_layers))
    if not trained:
        raise FreezetuneError("cannot express this plan for LLaMA-Factory: its freeze mode trains at least one layer")
    if trained != top_run and trained != list(range(count)):
        raise FreezetuneError(
            "cannot express this plan for LLaMA-Factory: it trains only a contiguous run "
            f"of top or bottom layers, and this plan trains layers {_ranges(trained)}"
        )
    layers = count if trained == top_run else -count
    modules = _llama_factory_modules(resolved, trained)
    extras = sorted({
        e.name.split(".")[-2] for e in anatomy.entries
        if e.part != "block" and e.name == e.tensor and resolved.is_trainable(e) and "." in e.name
    })
    selected = _llama_factory_select(_canonical_names(resolved), anatomy.num_layers, layers, modules, extras)
    _check("LLaMA-Factory", selected, resolved)
    config = {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": layers,
        "freeze_trainable_modules": ",".join(modules),
    }
    if extras:
        config["freeze_extra_modules"] = ",".join(extras)
    return yaml.safe_dump(config, sort_keys=False)


def _llama_factory_modules(resolved: ResolvedPlan, trained: list[int]) -> list[str]:
    """The block children trained in every trainable layer: LLaMA-Factory uses one list for all."""
    prefix = f"{resolved.anatomy.blocks_path}."
    states: dict[int, dict[str, set[bool]]] = {layer: {} for layer in trained}
    for entry in resolved.anatomy.entries:
        if entry.part == "block" and entry.layer in states and entry.name == entry.tensor:
            child = entry.name[len(prefix):].split(".")[1]
            states[entry.layer].setdefault(child, set()).add(resolved.is_trainable(entry))
    per_layer = {}
    for layer, children in states.items():
        partial = [c for c, s in children.items() if s == {True, False}]
        if partial:
            raise FreezetuneError(
                f"cannot express this plan for LLaMA-Factory: it trains whole modules, and this plan trains "
                f"part of '{partial[0]}' in layer {layer}"
            )
        per_layer[layer] = sorted(c for c, s in children.items() if s == {True})
    distinct = {tuple(m) for m in per_layer.values()}
    if len(distinct) > 1:
        raise FreezetuneError(
            "cannot express this plan for LLaMA-Factory: it trains the same modules in every trainable layer, "
            f"and this plan trains {' vs '.join('+'.join(m) for m in sorted(distinct))} in different layers"
        )
    modules = list(distinct.pop()) if distinct else []
    every_child = {c for children in states.values() for c in children}
    return ["all"] if modules and set(modules) == every_child else modules


def _check(tool: str, selected: set[str] | None, resolved: ResolvedPlan) -> None:
    wanted = set(resolved.trainable_names())
    if selected == wanted:
        return
    if selected is None:
        raise FreezetuneError(f"cannot express this plan for {tool}: it would reject the module names it needs")
    extra, missing = sorted(selected - wanted), sorted(wanted - selected)
    detail = []
    if extra:
        detail.append(f"also train {len(extra)} tensors the plan freezes (e.g. {extra[0]})")
    if missing:
        detail.append(f"leave {len(missing)} planned tensors frozen (e.g. {missing[0]})")
    raise FreezetuneError(
        f"cannot express this plan for {tool}: its substring name matching would {' and '.join(detail)}"
    )


def _ranges(indices: list[int]) -> str:
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


def render(resolved: ResolvedPlan, fmt: str) -> str:
    if fmt == "axolotl":
        return to_axolotl(resolved)
    if fmt == "llama-factory":
        return to_llama_factory(resolved)
    raise FreezetuneError(f"unknown format '{fmt}'; one of: {', '.join(FORMATS)}")
