"""The pick among pilot runs: on their frontier (validation loss against KL from the base), by what
the user prefers, and with the evidence said in one sentence. Two pilots differ on a measure only
when their per-item difference on the same items is significant (paired t, items as the units);
when no two pilots differ, the advice says so and takes the cheapest."""

from __future__ import annotations

import itertools
import math

import numpy as np

from freezetune.comparison.inference import Estimate
from freezetune.plans.preview import human_bytes

PREFER = {
    "quality": "the lowest validation loss; of pilots within noise of it, the cheapest",
    "forgetting": "the lowest KL from the base among pilots that measurably improved on the base's "
    "validation loss; of pilots within noise of it, the cheapest",
    "balanced": "among pilots within noise of the best validation loss, the lowest KL from the base; "
    "of pilots within noise of it, the cheapest",
}
LEVEL = 0.05  # two-sided significance for 'differs'


def frontier(pilots: list[dict]) -> list[dict]:
    """The pilots no other beats on both validation loss and KL (lower is better on both)."""

    def beaten(a: dict) -> bool:
        return any(
            b["val_loss"] <= a["val_loss"]
            and b["kl"] <= a["kl"]
            and (b["val_loss"], b["kl"]) != (a["val_loss"], a["kl"])
            for b in pilots
        )

    return [p for p in pilots if not beaten(p)]


def layers_of(pilots: list[dict]) -> list[list[dict]]:
    """Non-dominated sorting: the frontier, then the frontier of what is left, and so on."""
    left, out = list(pilots), []
    while left:
        front = frontier(left)
        out.append(front)
        left = [p for p in left if p not in front]
    return out


def better_half(pilots: list[dict], keep: int, prefer: str) -> list[dict]:
    """The ``keep`` pilots to train longer: for quality the lowest validation losses, otherwise the
    pilots nearest the frontier (layer by layer, the lower validation loss first within a layer)."""
    if prefer == "quality":
        return sorted(pilots, key=lambda p: p["val_loss"])[:keep]
    ordered = [p for layer in layers_of(pilots) for p in sorted(layer, key=lambda p: p["val_loss"])]
    return ordered[:keep]


def differs(a: list[float], b: list[float]) -> bool:
    """Whether a and b, measured on the same items, differ beyond the items' noise (paired t)."""
    difference = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(difference) < 2:
        return False
    se = float(difference.std(ddof=1)) / math.sqrt(len(difference))
    return Estimate(float(difference.mean()), se, len(difference) - 1).p < LEVEL


def _cheapest_tied(pool: list[dict], best: dict, key: str) -> dict:
    """``best``, or a cheaper pilot of ``pool`` whose ``key`` items do not differ from its."""
    tied = [p for p in pool if p is best or not differs(p[key], best[key])]
    return min(tied, key=lambda p: (p["memory_estimate_bytes"], p["val_loss"]))


def pick_pilot(final: list[dict], base: dict, prefer: str) -> tuple[dict, str | None]:
    """The chosen pilot of the last round, and a sentence when the pilots could not be separated."""
    pairs = itertools.combinations(final, 2)
    if not any(
        differs(a["val_items"], b["val_items"]) or differs(a["kl_items"], b["kl_items"])
        for a, b in pairs
    ):
        cheapest = min(final, key=lambda p: (p["memory_estimate_bytes"], p["val_loss"]))
        return cheapest, (
            f"The pilots could not separate the {len(final)} candidates of the last round (validation "
            "loss and KL within noise of each other): the cheapest is picked."
        )
    front = frontier(final)
    best = min(front, key=lambda p: p["val_loss"])
    near_best = [p for p in front if p is best or not differs(p["val_items"], best["val_items"])]
    if prefer == "quality":
        return _cheapest_tied(near_best, best, "val_items"), None
    if prefer == "forgetting":
        improved = [
            p
            for p in front
            if p["val_loss"] < base["val_loss"] and differs(p["val_items"], base["val_items"])
        ]
        pool = improved or front
    else:
        pool = near_best
    least = min(pool, key=lambda p: (p["kl"], p["val_loss"]))
    return _cheapest_tied(pool, least, "kl_items"), None


def evidence_sentence(
    chosen: dict, final: list[dict], base: dict, full_bytes: int, rate: float
) -> str:
    """'PLAN: validation loss 0.31 against 0.29 for the best pilot, KL 0.11, 0.55x full's memory...'"""
    best = min(final, key=lambda p: p["val_loss"])
    loss = (
        f"the lowest validation loss of the pilots, {chosen['val_loss']:.3f}"
        if chosen is best
        else f"validation loss {chosen['val_loss']:.3f} against {best['val_loss']:.3f} for the best "
        f"pilot ('{best['plan']}')"
    )
    return (
        f"'{chosen['plan']}': {loss} (the base: {base['val_loss']:.3f}), KL from the base "
        f"{chosen['kl']:.3f}, {chosen['memory_estimate_bytes'] / full_bytes:.2f}x full fine-tuning's "
        f"memory estimate ({human_bytes(chosen['memory_estimate_bytes'])}); {chosen['steps']} steps "
        f"at lr {rate:g}."
    )


def pilot_lines(info: dict) -> list[str]:
    """The pilots table and the frontier, for a terminal."""
    search = info.get("pilot_rate_search") or []
    grid = ", ".join(f"{s['lr']:g}" for s in search)
    rate = f"lr {info['pilot_rate']:g}" + (
        f" (searched over {grid} on '{info['pilots'][0]['plan']}')" if search else " (given)"
    )
    lines = [
        "",
        f"pilots: successive halving, {rate}, {info['pilot_cost_s']:.0f} s in all; scored on "
        f"{info['pilot_items']['validation']} held-out examples (the base: validation loss "
        f"{info['pilot_base']['val_loss']:.3f}) and KL from the base on {info['pilot_items']['retain']} "
        "retain texts",
        f"  {'round':>5}  {'plan':<40} {'steps':>5} {'val loss':>9} {'KL':>8} {'memory':>10} "
        f"{'step pred':>9} {'step meas':>9}",
    ]
    for p in info["pilots"]:
        if p.get("failed"):
            lines.append(f"  {p['round']:>5}  {p['plan'][:40]:<40} {p['steps']:>5} {p['failed']}")
            continue
        lines.append(
            f"  {p['round']:>5}  {p['plan'][:40]:<40} {p['steps']:>5} {p['val_loss']:>9.4f} {p['kl']:>8.4f} "
            f"{human_bytes(p['memory_estimate_bytes']):>10} {p['predicted_step_time_s']:>8.2f}s "
            f"{p['step_time_s']:>8.2f}s"
        )
    return lines + [
        f"pilot frontier (last round): {'; '.join(repr(p) for p in info['pilot_frontier'])}"
    ]
