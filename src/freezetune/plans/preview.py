"""What a plan does to a model, before anything runs: a JSON-ready description and its text table."""

from __future__ import annotations

from dataclasses import replace

from freezetune.plans.memory import estimate_memory
from freezetune.plans.resolution import ResolvedPlan
from freezetune.plans.selectors import index_ranges


def describe(
    resolved: ResolvedPlan,
    model_name: str,
    seq_len: int = 512,
    batch_size: int = 4,
    dtype: str = "float32",
    objective: str = "sft",
    precompute_ref: bool = False,
) -> dict:
    """Everything `freezetune plan --json` prints, as one dict."""
    settings = (seq_len, batch_size, dtype, objective, precompute_ref)
    anatomy = resolved.anatomy
    full = replace(resolved, trainable=frozenset(anatomy.tensors))
    return {
        "model": model_name,
        "model_class": anatomy.model_class,
        "blocks_path": anatomy.blocks_path,
        "num_layers": anatomy.num_layers,
        "plan": resolved.plan.to_list(),
        "total_params": resolved.total_params,
        "trainable_params": resolved.trainable_params,
        "trainable_fraction": resolved.trainable_params / resolved.total_params,
        "lowest_trainable_layer": resolved.lowest_trainable_layer,
        "embeddings_trainable": resolved.embeddings_trainable,
        "backward_depth": resolved.backward_depth,
        "layers": resolved.layer_rows(),
        "parts": resolved.part_rows(),
        "trainable_names": resolved.trainable_names(),
        # a tied tensor is trained under its canonical name; its other names (e.g. lm_head.weight) are aliases
        "trainable_aliases": {
            e.name: e.tensor
            for e in anatomy.entries
            if e.name != e.tensor and resolved.is_trainable(e)
        },
        "notices": list(resolved.notices),
        "memory_settings": {
            "seq_len": seq_len,
            "batch_size": batch_size,
            "dtype": dtype,
            "optimizer": "AdamW",
            "objective": objective,
            "precompute_ref": precompute_ref,
        },
        "memory_estimate_bytes": _memory(resolved, *settings),
        "full_finetune_memory_estimate_bytes": _memory(full, *settings),
    }


def _memory(resolved: ResolvedPlan, *settings) -> dict[str, int]:
    """estimate_memory for ``resolved``; ``settings``: its seq_len, batch_size, dtype[, objective, precompute_ref]."""
    anatomy, trained, depth = resolved.anatomy, resolved.trainable_params, resolved.backward_depth
    return estimate_memory(anatomy, trained, depth, *settings)


def human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def render_text(info: dict) -> str:
    """The human-readable preview: per-layer table, other parts, totals, memory."""
    lines = [
        f"model {info['model']} ({info['model_class']}): {info['num_layers']} blocks at {info['blocks_path']}",
        f"plan: {'; '.join(info['plan'])}",
        "",
        f"{'layer':>5}  {'params':>13}  {'trainable':>13}  state",
    ]
    for row in info["layers"]:
        lines.append(
            f"{row['index']:>5}  {row['params']:>13,}  {row['trainable_params']:>13,}  {row['state']}"
        )
    lines += ["", f"{'part':<10}  {'params':>13}  {'trainable':>13}  state"]
    for row in info["parts"]:
        tied = f"  (tied to {', '.join(row['tied_to'])})" if row["tied_to"] else ""
        lines.append(
            f"{row['part']:<10}  {row['params']:>13,}  {row['trainable_params']:>13,}  {row['state']}{tied}"
        )
    lowest = info["lowest_trainable_layer"]
    if info["embeddings_trainable"]:
        backward = "the embeddings train, so the backward pass runs through every block"
    elif lowest is None:
        backward = "no block trains, so the backward pass stops above the blocks"
    else:
        depth = f"{info['backward_depth']} of {info['num_layers']} blocks"
        backward = f"the backward pass stops at block {lowest} ({depth})"
    lines += [
        "",
        f"total {info['total_params']:,} parameters, {info['trainable_params']:,} trainable "
        f"({100 * info['trainable_fraction']:.2f}%)",
        f"lowest trainable block: {lowest if lowest is not None else 'none'}; {backward}",
        "",
    ]
    settings = info["memory_settings"]
    dpo = settings.get("objective") == "dpo"
    batch = f"batch {settings['batch_size']}" + (" pairs, DPO" if dpo else "")
    lines.append(
        f"training memory estimate ({settings['dtype']}, AdamW, seq {settings['seq_len']}, "
        f"{batch})     this plan   full fine-tune"
    )
    mine, full = info["memory_estimate_bytes"], info["full_finetune_memory_estimate_bytes"]
    kinds = ("weights", "gradients", "optimizer", "working_copies", "activations", "logits")
    for key in (*kinds, *(["reference"] if dpo else []), "total"):
        label = key.replace("_", " ")  # the JSON's key, in words
        lines.append(f"  {label:<14}{human_bytes(mine[key]):>51}  {human_bytes(full[key]):>15}")
    lines += [f"notice: {notice}" for notice in info["notices"]]
    return "\n".join(lines)


def describe_schedule(
    universe: ResolvedPlan,
    schedule,
    total_steps: int,
    seed: int,
    seq_len: int,
    batch_size: int,
    dtype: str,
) -> dict:
    """The phases of a schedule (plans/schedule.py) over ``universe``, each with its memory estimate, and
    the peak: the maximum over every phase the schedule can reach (for LISA, over every draw)."""
    phases = [
        {
            "steps": p["steps"],
            "active_blocks": p["blocks"],
            "plan": p["resolved"].plan.render(),
            "trainable_params": p["resolved"].trainable_params,
            "backward_depth": p["resolved"].backward_depth,
            "memory_estimate_bytes": _memory(p["resolved"], seq_len, batch_size, dtype)["total"],
        }
        for p in schedule.phases(universe, total_steps, seed)
    ]
    peak = schedule.peak_plan(universe)
    return {
        "text": schedule.render(),
        "seed": seed,
        "phases": phases,
        "peak_memory_estimate_bytes": _memory(peak, seq_len, batch_size, dtype),
        "peak_active_blocks": [r["index"] for r in peak.layer_rows() if r["trainable_params"]],
    }


def render_schedule_text(info: dict, num_layers: int) -> str:
    sched = info["schedule"]
    drawn = (
        f" (LISA's draws for --seed {sched['seed']})" if sched["text"].startswith("lisa") else ""
    )
    if "sample=gradient" in sched["text"]:  # later periods draw by scores only training will see
        drawn = " (the first period's draw; later ones follow the blocks' gradient scores)"
    lines = [
        "",
        f"schedule: {sched['text']}{drawn}",
        f"{'steps':>11}  {'active blocks':<24}  {'trainable':>13}  {'backward':>8}  {'memory':>10}",
    ]
    for phase in sched["phases"]:
        first, last = phase["steps"]
        steps = f"{first + 1}-{last + 1 if last is not None else 'end'}"
        lines.append(
            f"{steps:>11}  {index_ranges(phase['active_blocks']):<24}  {phase['trainable_params']:>13,}  "
            f"{phase['backward_depth']:>4}/{num_layers:<3}  {human_bytes(phase['memory_estimate_bytes']):>10}"
        )
    peak = sched["peak_memory_estimate_bytes"]["total"]
    full = info["full_finetune_memory_estimate_bytes"]["total"]
    worst = (
        "the whole plan"
        if sched["text"].startswith("gradual")
        else f"a draw with blocks {index_ranges(sched['peak_active_blocks'])} (the longest backward)"
    )
    lines.append(
        f"peak training memory estimate over the phases: {human_bytes(peak)} at {worst}; "
        f"full fine-tune {human_bytes(full)}"
    )
    return "\n" + "\n".join(lines)  # a blank line under the plan's preview
