"""advise: which layers to train, proposed from evidence and checked against a memory budget.

Evidence per block: the Spectrum-style signal-to-noise of its weight matrices (singular values
above the Marchenko-Pastur edge of a same-shaped random matrix with the same entry spread,
against those below; no data needed), and with data the gradient norm relative to the weight
norm over a few batches of the user's examples, through the forward-backward of TrainStep (no
optimizer, no weight moves). Candidates (candidates.py) are plans across the whole depth, each
with its memory estimate and the step-time ratio a FLOP model predicts. The pick is the
candidate that covers the most evidence within the budget; when a candidate with more evidence
is over the budget, the advice says what it would cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from freezetune.advice.candidates import Candidate, block_sizes, candidates
from freezetune.advice.pilot_choice import (
    PREFER,
    evidence_sentence,
    frontier,
    pick_pilot,
    pilot_lines,
)
from freezetune.advice.pilots import PilotRequest, choose_pilots, run_pilots
from freezetune.data.examples import Example, collate
from freezetune.errors import FreezetuneError
from freezetune.plans.anatomy import Anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.memory import estimate_memory
from freezetune.plans.preview import human_bytes
from freezetune.plans.resolution import resolve
from freezetune.training.step import MicroBatch, TrainStep


def snr_scores(model: torch.nn.Module, anatomy: Anatomy) -> list[float]:
    """Per block, the mean over its 2-d weights of (sum of singular values above the noise edge) /
    (sum of those below), the edge being std(W) * (sqrt(rows) + sqrt(cols))."""
    params = dict(model.named_parameters())
    ratios: list[list[float]] = [[] for _ in range(anatomy.num_layers)]
    for entry in anatomy.entries:
        weight = params.get(entry.name)
        if (
            entry.part != "block"
            or entry.name != entry.tensor
            or weight is None
            or weight.dim() != 2
            or min(weight.shape) < 2
        ):
            continue
        matrix = weight.detach().float()
        values = torch.linalg.svdvals(matrix)
        edge = float(matrix.std()) * (math.sqrt(matrix.shape[0]) + math.sqrt(matrix.shape[1]))
        noise = float(values[values <= edge].sum())
        ratios[entry.layer].append(
            float(values[values > edge].sum()) / noise if noise > 0 else float(values.sum())
        )
    return [sum(r) / len(r) if r else 0.0 for r in ratios]


def gradient_scores(
    model: torch.nn.Module,
    anatomy: Anatomy,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    accelerator,
    batches: int = 4,
) -> list[float]:
    """Per block, ||gradient|| / ||weights|| summed over ``batches`` batches through the full model."""
    from freezetune.distributed.backends import Replicated

    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(True)
        param.grad = None
    step = TrainStep(
        model, Replicated(accelerator), None, None, accelerator, accelerator.device, world=1
    )
    model.train()
    starts = range(0, min(len(examples), batches * batch_size), batch_size)
    step.forward_backward(
        [
            MicroBatch(collate(rows, pad_id), None, [len(r.input_ids) for r in rows], [])
            for rows in (examples[i : i + batch_size] for i in starts)
        ]
    )
    params = dict(model.named_parameters())
    grads, norms = [0.0] * anatomy.num_layers, [0.0] * anatomy.num_layers
    for entry in anatomy.entries:
        if (
            entry.part == "block"
            and entry.name == entry.tensor
            and params[entry.name].grad is not None
        ):
            grads[entry.layer] += float(params[entry.name].grad.float().pow(2).sum())
            norms[entry.layer] += float(params[entry.name].detach().float().pow(2).sum())
    for name, param in model.named_parameters():
        param.grad = None
        param.requires_grad_(trainable[name])
    return [math.sqrt(g) / math.sqrt(n) if n else 0.0 for g, n in zip(grads, norms)]


def pick(found: list[Candidate], budget: int, said: str = "") -> Candidate:
    """The candidate covering the most evidence whose estimate fits ``budget``; the smaller one on a tie.
    ``said``: the budget in words, where it is no --memory-budget the user gave."""
    said = said or f"the memory budget of {human_bytes(budget)}"
    fitting = [c for c in found if c.memory_estimate_bytes <= budget]
    if not fitting:
        smallest = min(found, key=lambda c: c.memory_estimate_bytes)
        raise FreezetuneError(
            f"no candidate plan fits {said}; the smallest, "
            f"'{smallest.plan}', needs about {human_bytes(smallest.memory_estimate_bytes)}; give a "
            f"--memory-budget of {human_bytes(smallest.memory_estimate_bytes)} or more"
        )
    best = max(fitting, key=lambda c: (c.score, -c.memory_estimate_bytes))
    if best.score <= 0:
        raise FreezetuneError(
            f"no candidate within {said} trains a block with evidence "
            "(the evidence sits in blocks only larger plans reach); give a larger --memory-budget"
        )
    return best


def pilot_advice(
    model,
    anatomy,
    found,
    budget: int,
    full_bytes: int,
    request: PilotRequest,
    accelerator,
    step_seconds: float,
    log=None,
) -> dict:
    """Pilot runs of the strongest candidates within ``budget``, and the pick on their frontier."""
    chosen = choose_pilots(found, budget, request.count)
    ran = run_pilots(model, anatomy, chosen, request, accelerator, step_seconds, log)
    last = max(p["round"] for p in ran["pilots"])
    final = [p for p in ran["pilots"] if p["round"] == last and p.get("failed") is None]
    if not final:
        raise FreezetuneError(
            f"every pilot of the last round diverged at lr {ran['rate']:g}: give a lower --lr"
        )
    picked, unseparated = pick_pilot(final, ran["base"], request.prefer)
    reason = (
        f"Picked on the pilots' frontier for {request.prefer} ({PREFER[request.prefer]}): "
        + evidence_sentence(picked, final, ran["base"], full_bytes, ran["rate"])
    )
    return {
        "plan": picked["plan"],
        "reason": f"{unseparated} {reason}" if unseparated else reason,
        "prefer": request.prefer,
        "pilot_rate": ran["rate"],
        "pilot_rate_search": ran["rate_search"],
        "pilot_base": {"val_loss": ran["base"]["val_loss"]},
        "pilot_items": {
            "validation": len(request.data.validation),
            "retain": len(request.data.retain),
        },
        "pilot_cost_s": round(ran["cost_s"], 1),
        "pilots": [
            {k: v for k, v in p.items() if k not in ("val_items", "kl_items")}
            for p in ran["pilots"]
        ],
        "pilot_frontier": [p["plan"] for p in frontier(final)],
    }


def advise(
    loaded,
    examples: list[Example] | None,
    budget: int | None,
    seq_len: int,
    batch_size: int,
    dtype: str = "float32",
    pilots: PilotRequest | None = None,
    log=None,
) -> dict:
    """The advice for ``loaded`` (models.loading.LoadedModel): evidence per block (gradients too when
    ``examples`` are given), candidates, the pick within ``budget`` (default: half of full fine-tuning's
    estimate) and the sentence saying why; with ``pilots``, the strongest candidates train briefly and
    the pick is on their frontier. No evidence, or nothing that fits, is a FreezetuneError."""
    from freezetune.data.examples import pad_token_id
    from freezetune.plans.anatomy import find_anatomy
    from freezetune.training.accelerator import make_accelerator

    anatomy = find_anatomy(loaded.model)
    if anatomy.num_layers < 2:
        raise FreezetuneError(
            f"the model has {anatomy.num_layers} block{'s' * (anatomy.num_layers != 1)}: "
            "there are no layers to choose between"
        )
    snr = snr_scores(loaded.model, anatomy)
    gradient, accelerator = None, make_accelerator("fp32", None, Path("."))
    if examples:
        started = time.perf_counter()
        gradient = gradient_scores(
            loaded.model, anatomy, examples, batch_size, pad_token_id(loaded.tokenizer), accelerator
        )
        # the probe is full fine-tuning's forward and backward: its time per batch scales the predictions
        full_step_s = (time.perf_counter() - started) / math.ceil(
            min(len(examples), 4 * batch_size) / batch_size
        )
    evidence = gradient or snr
    if not any(score > 0 for score in evidence):
        spectra = "no 2-d weights, or spectra all noise, as random weights have: give --data"
        why = "no gradient reached them" if gradient else spectra
        raise FreezetuneError(f"no evidence: every block scored 0 ({why})")
    found = candidates(anatomy, evidence, seq_len, batch_size, dtype)
    full = resolve(FreezePlan.parse("train all"), anatomy)
    full_bytes = estimate_memory(
        anatomy, full.trainable_params, full.backward_depth, seq_len, batch_size, dtype
    )["total"]
    within = (
        f"the memory budget of {human_bytes(budget)}"
        if budget
        else f"{human_bytes(full_bytes // 2)} (no memory budget given: half of full fine-tuning's estimate)"
    )
    chosen = pick(found, budget or full_bytes // 2, within)
    which = "gradients on the data" if gradient else "weight spectra (no data)"
    reason = (
        f"'{chosen.plan}' trains the blocks holding {100 * chosen.score:.0f}% of the evidence ({which}), the most "
        f"of any candidate within {within}; its estimate is {human_bytes(chosen.memory_estimate_bytes)} and its "
        f"step about {chosen.predicted_step_ratio:.2f}x full's."
    )
    # the budget must not rule out what the evidence favours without saying so: among plans of the pick's
    # size (more blocks always hold more evidence), the one that holds the most, when the budget excluded it
    same_size = [c for c in found if c.blocks == chosen.blocks]
    favoured = max(same_size, key=lambda c: (c.score, -c.memory_estimate_bytes))
    over = favoured if favoured.score > chosen.score else None
    if over is not None:
        reason += (
            f" Of the plans training {chosen.blocks} block{'s' * (chosen.blocks != 1)}, '{over.plan}' "
            "holds more of the evidence "
            f"({100 * over.score:.0f}%) but needs about {human_bytes(over.memory_estimate_bytes)}, over the budget."
        )
    params = block_sizes(anatomy)[0]
    piloted = {}
    if pilots is not None and gradient is not None:
        piloted = pilot_advice(
            loaded.model,
            anatomy,
            found,
            budget or full_bytes // 2,
            full_bytes,
            pilots,
            accelerator,
            full_step_s,
            log,
        )
        piloted["reason"] += f" From the evidence alone: {reason}"
    return {
        "memory_budget_bytes": budget or full_bytes // 2,
        "evidence": [
            {
                "index": i,
                "gradient_score": gradient[i] if gradient else None,
                "snr_score": snr[i],
                "params": params[i],
            }
            for i in range(anatomy.num_layers)
        ],
        "candidates": [asdict(c) for c in found],
        "over_budget": asdict(over) if over is not None else None,
        "evidence_plan": chosen.plan,
        "plan": chosen.plan,
        "reason": reason,
        **piloted,
    }


def render_text(info: dict) -> str:
    """The evidence table, the candidates and the pick, for a terminal."""
    lines = [
        f"{info['model']}: evidence per block "
        f"(gradient: {'from ' + info['data'] if info.get('data') else 'no --data'})",
        f"  {'block':>5}  {'params':>12}  {'snr':>8}  {'gradient':>9}",
    ]
    for row in info["evidence"]:
        grad = f"{row['gradient_score']:.4g}" if row["gradient_score"] is not None else "—"
        lines.append(
            f"  {row['index']:>5}  {row['params']:>12,}  {row['snr_score']:>8.4g}  {grad:>9}"
        )
    lines += ["", f"  {'candidate':<44} {'memory':>10} {'step':>6} {'evidence':>9}"]
    for c in info["candidates"]:
        mark = "  <- pick" if c["plan"] == info["plan"] else ""
        lines.append(
            f"  {c['plan'][:44]:<44} {c['memory_estimate_bytes'] / 2**30:>7.2f} GiB {c['predicted_step_ratio']:>5.2f}x "
            f"{100 * c['score']:>8.1f}%{mark}"
        )
    if info.get("pilots"):
        lines += pilot_lines(info)
    return "\n".join(lines + ["", f"plan: {info['plan']}", info["reason"]])
