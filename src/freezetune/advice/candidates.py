"""The plans `advise` chooses between, across the whole depth of the stack: which layers matter
depends on the task (the top quarter, the bottom and the top, the middle, the shallow layers
have each been reported best somewhere), so no region is left out before the evidence speaks.

For k of 1, 2, 1/8, 1/4, 1/2 and 3/4 of the blocks: the top k, and the top k with the final norm
and the head; their MLPs only and their attention only; windows of k consecutive blocks at the
bottom and in the middle; the k blocks the evidence ranks highest; and the bottom k/2 with the
top k/2. Each is a plan the language can say, with its memory estimate (what `plan` prints) and
the step-time ratio a FLOP model predicts, so a window low in the stack shows what its long
backward pass costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from freezetune.plans.anatomy import Anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.memory import estimate_memory
from freezetune.plans.resolution import ResolvedPlan, resolve
from freezetune.plans.selectors import index_ranges


@dataclass
class Candidate:
    plan: str
    trainable_params: int
    memory_estimate_bytes: int
    predicted_step_ratio: float
    score: float  # the share of the evidence the plan trains (0 to 1)
    blocks: int = 0  # how many blocks it trains any tensor of
    family: str = ""  # where in the stack it trains: top, top+head, mlp, attn, bottom, middle, ranked, bottom+top


def _span(first: int, last: int) -> str:
    return index_ranges(list(range(first, last + 1)))


def candidate_plans(layers: int, evidence: list[float]) -> list[str]:
    """Every candidate's plan text, smallest k first (duplicates are dropped later, by what they train)."""
    return [text for text, _ in _families(layers, evidence)]


def _families(layers: int, evidence: list[float]) -> list[tuple[str, str]]:
    """(plan text, family) of every candidate, smallest k first."""
    sizes = sorted(
        {
            k
            for k in (1, 2, layers // 8, layers // 4, layers // 2, 3 * layers // 4)
            if 0 < k < layers
        }
    )
    ranked = sorted(range(layers), key=lambda i: -evidence[i])
    texts = []
    for k in sizes:
        middle = (layers - k) // 2
        texts += [
            (f"train top {k}", "top"),
            (f"train top {k}; train norm; train head", "top+head"),
            (f"train mlp@top {k}", "mlp"),
            (f"train attn@top {k}", "attn"),
            (f"train layers {_span(0, k - 1)}", "bottom"),
            (f"train layers {_span(middle, middle + k - 1)}", "middle"),
            (f"train layers {index_ranges(sorted(ranked[:k]))}", "ranked"),  # 13-22, not 13,14,...
        ]
        if k >= 2:
            low, high = k // 2, k - k // 2
            texts.append(
                (
                    f"train layers {_span(0, low - 1)},{_span(layers - high, layers - 1)}",
                    "bottom+top",
                )
            )
    return texts


def candidates(
    anatomy: Anatomy, evidence: list[float], seq_len: int, batch_size: int, dtype: str
) -> list[Candidate]:
    """Every candidate plan (candidate_plans) that trains a distinct set of tensors, scored."""
    layers = anatomy.num_layers
    total = sum(evidence) or 1.0
    found, seen = [], set()
    for text, family in _families(layers, evidence):
        resolved = resolve(FreezePlan.parse(text), anatomy)
        names = frozenset(resolved.trainable_names())
        if names in seen:  # a window may be the top k, the ranked blocks may be either
            continue
        seen.add(names)
        share = trained_share(anatomy, names)
        memory = estimate_memory(
            anatomy, resolved.trainable_params, resolved.backward_depth, seq_len, batch_size, dtype
        )
        found.append(
            Candidate(
                text,
                resolved.trainable_params,
                memory["total"],
                round(predicted_step_ratio(resolved), 4),
                round(sum(share[i] * evidence[i] for i in range(layers)) / total, 4),
                sum(1 for part in share if part > 0),
                family,
            )
        )
    return found


def predicted_step_ratio(resolved: ResolvedPlan) -> float:
    """Step FLOPs against full training's, counting per block its forward (1x), and from the lowest block
    the backward reaches up: input gradients (1x) and, where it trains, weight gradients (1x). Block
    costs are proportional to their parameters; the head always runs forward and input gradients,
    and weight gradients where it trains."""
    anatomy = resolved.anatomy
    names = frozenset(resolved.trainable_names())
    sizes, trained = block_sizes(anatomy, names)
    head = anatomy.dims.vocab_size * anatomy.dims.hidden_size
    head_trains = any(
        e.part == "head" and (e.tensor in names or e.name in names) for e in anatomy.entries
    )
    lowest = anatomy.num_layers - resolved.backward_depth
    plan = sum(sizes) + (3 if head_trains else 2) * head + sum(sizes[lowest:]) + sum(trained)
    return plan / (3 * sum(sizes) + 3 * head)


def block_sizes(
    anatomy: Anatomy, names: frozenset[str] = frozenset()
) -> tuple[list[int], list[int]]:
    """Per block, its parameters and how many of them are among ``names``."""
    sizes, trained = [0] * anatomy.num_layers, [0] * anatomy.num_layers
    for entry in anatomy.entries:
        if entry.part == "block" and entry.name == entry.tensor:
            sizes[entry.layer] += entry.numel
            trained[entry.layer] += entry.numel if entry.name in names else 0
    return sizes, trained


def trained_share(anatomy: Anatomy, names: frozenset[str]) -> list[float]:
    """Per block, the fraction of its parameters the plan trains."""
    sizes, trained = block_sizes(anatomy, names)
    return [t / s if s else 0.0 for t, s in zip(trained, sizes)]
