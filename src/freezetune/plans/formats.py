"""Emit a resolved plan in the formats other tools read, or say why it cannot be expressed.

Each emitter simulates how the other tool matches names and checks that it would train
exactly the same tensors; a format that would train something else is refused, never
emitted approximately.

- Axolotl ``unfrozen_parameters``: regexes applied with ``re.match`` after Axolotl escapes
  every ``.``; we emit one anchored exact name per trainable tensor.
- LLaMA-Factory ``finetuning_type: freeze``: a contiguous run of top (+N) or bottom (-N)
  layers, no layer (0), or with ``use_llama_pro`` every (L/N)-th layer ending at the top;
  module names inside them and extra non-layer modules, all matched as substrings. A refusal
  says which substring over-matches and names the nearest plan the tool can express.
"""

from __future__ import annotations

import re

import yaml

from freezetune.errors import FreezetuneError
from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.selectors import index_ranges

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


def _llama_factory_layer_ids(num_layers: int, layers: int, llama_pro: bool) -> range:
    """The layer ids LLaMA-Factory trains for ``freeze_trainable_layers`` (and ``use_llama_pro``)."""
    if llama_pro:
        stride = num_layers // layers
        return range(stride - 1, num_layers + stride - 1, stride)
    return (
        range(max(0, num_layers - layers), num_layers)
        if layers > 0
        else range(min(-layers, num_layers))
    )


def _llama_factory_select(
    names: list[str],
    num_layers: int,
    layers: int,
    modules: list[str],
    extras: list[str],
    llama_pro: bool = False,
):
    """LLaMA-Factory's freeze selection, as its adapter code does it (substring matching)."""
    ids = _llama_factory_layer_ids(num_layers, layers, llama_pro)
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


def _llama_factory_layers(trained: list[int], num_layers: int) -> tuple[int, bool]:
    """``freeze_trainable_layers`` and ``use_llama_pro`` for these trained layers, or an error."""
    count = len(trained)
    if not trained:
        return 0, False  # 0 selects no layer: only freeze_extra_modules train
    if trained == list(range(num_layers - count, num_layers)):
        return count, False
    if trained == list(range(count)):
        return -count, False
    if num_layers % count == 0 and trained == list(
        _llama_factory_layer_ids(num_layers, count, True)
    ):
        return count, True  # every (L/count)-th layer, ending at the top
    raise FreezetuneError(
        "cannot express this plan for LLaMA-Factory: it trains a contiguous run of top or bottom layers, "
        f"or every k-th layer ending at the top, and this plan trains layers {index_ranges(trained)}"
    )


def _llama_factory_config(resolved: ResolvedPlan) -> tuple[dict, set[str] | None, list[str]]:
    anatomy = resolved.anatomy
    trained = [r["index"] for r in resolved.layer_rows() if r["trainable_params"]]
    layers, llama_pro = _llama_factory_layers(trained, anatomy.num_layers)
    modules = _llama_factory_modules(resolved, trained) if trained else ["all"]
    extras = sorted(
        {
            e.name.split(".")[-2]
            for e in anatomy.entries
            if e.part != "block"
            and e.name == e.tensor
            and resolved.is_trainable(e)
            and "." in e.name
        }
    )
    selected = _llama_factory_select(
        _canonical_names(resolved), anatomy.num_layers, layers, modules, extras, llama_pro
    )
    config = {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": layers,
        "freeze_trainable_modules": ",".join(modules),
    }
    if llama_pro:
        config["use_llama_pro"] = True
    if extras:
        config["freeze_extra_modules"] = ",".join(extras)
    return config, selected, extras


def to_llama_factory(resolved: ResolvedPlan) -> str:
    config, selected, extras = _llama_factory_config(resolved)
    try:
        _check("LLaMA-Factory", selected, resolved)
    except FreezetuneError as exc:
        raise FreezetuneError(
            f"{exc}{_substring_reason(resolved, extras, selected)}{_nearest(resolved, extras)}"
        ) from None
    text = yaml.safe_dump(config, sort_keys=False)
    if config.get("use_llama_pro"):
        stride = resolved.anatomy.num_layers // config["freeze_trainable_layers"]
        text = (
            "# use_llama_pro is named for LLaMA-Pro's block expansion; with freeze_trainable_layers it trains\n"
            f"# one layer in every {stride}, ending at the top, which is exactly this plan\n"
        ) + text
    return text


def _substring_reason(resolved: ResolvedPlan, extras: list[str], selected: set[str] | None) -> str:
    """Which extra module name is a substring of tensor names inside the blocks, and of how many."""
    prefix, wanted = f"{resolved.anatomy.blocks_path}.", set(resolved.trainable_names())
    for extra in extras:
        inside = sorted(
            n for n in (selected or ()) if n.startswith(prefix) and extra in n and n not in wanted
        )
        if inside:
            return f", because '{extra}' is also a substring of {len(inside)} tensor names inside the blocks"
    return ""


def _nearest(resolved: ResolvedPlan, extras: list[str]) -> str:
    """The closest plan LLaMA-Factory can express: this one with the over-matching outside parts frozen."""
    from freezetune.plans.language import FreezePlan
    from freezetune.plans.resolution import resolve

    parts = {
        e.name.split(".")[-2]: e.part
        for e in resolved.anatomy.entries
        if e.part != "block" and "." in e.name
    }
    wanted = set(resolved.trainable_names())
    over = [
        x for x in extras if any(x in n and n not in wanted for n in _canonical_names(resolved))
    ]
    dropped = [parts[x] for x in over if parts.get(x) in ("norm", "head", "embeddings")]
    if not dropped:
        return ""
    freezes = [f"freeze {part}" for part in dropped]
    # the plan's own 'train norm' dropped rather than undone by a 'freeze norm' after it
    kept = [
        r.render() for r in resolved.plan.rules if r.render() not in {f"train {p}" for p in dropped}
    ]
    for rules in (kept, kept + freezes, resolved.plan.to_list() + freezes):
        text = "; ".join(rules)
        try:
            nearer = resolve(FreezePlan.parse(text), resolved.anatomy)
            config, selected, _ = _llama_factory_config(nearer)
            _check("LLaMA-Factory", selected, nearer)
        except FreezetuneError:
            continue
        layers = config["freeze_trainable_layers"]
        return f"; the nearest plan it can express is '{text}' (freeze_trainable_layers: {layers})"
    return ""


def _llama_factory_modules(resolved: ResolvedPlan, trained: list[int]) -> list[str]:
    """The block children trained in every trainable layer: LLaMA-Factory uses one list for all."""
    prefix = f"{resolved.anatomy.blocks_path}."
    states: dict[int, dict[str, set[bool]]] = {layer: {} for layer in trained}
    for entry in resolved.anatomy.entries:
        if entry.part == "block" and entry.layer in states and entry.name == entry.tensor:
            child = entry.name[len(prefix) :].split(".")[1]
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
        raise FreezetuneError(
            f"cannot express this plan for {tool}: it would reject the module names it needs"
        )
    extra, missing = sorted(selected - wanted), sorted(wanted - selected)
    detail = []
    if extra:
        detail.append(f"also train {len(extra)} tensors the plan freezes (e.g. {extra[0]})")
    if missing:
        detail.append(f"leave {len(missing)} planned tensors frozen (e.g. {missing[0]})")
    raise FreezetuneError(
        f"cannot express this plan for {tool}: its substring name matching would {' and '.join(detail)}"
    )


def render(resolved: ResolvedPlan, fmt: str) -> str:
    if fmt == "axolotl":
        return to_axolotl(resolved)
    if fmt == "llama-factory":
        return to_llama_factory(resolved)
    raise FreezetuneError(f"unknown format '{fmt}'; one of: {', '.join(FORMATS)}")
