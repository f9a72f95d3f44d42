"""Paired inference over items and seeds: how sure a difference between two strategies is.

Every strategy is scored on the same held-out items (and retain documents) with the same seed
indices, so a comparison has a value per (seed, item) for each strategy. Two sources of noise
decide whether a difference would hold up: another seed (data order, LoRA's init) and other
items from the same task. The difference d[s, i] = a[s, i] - b[s, i] is modelled as crossed
random effects (a mixed model fitted by the method of moments):

    value[k, s, i] = strategy[k] + item[i] + (strategy x item)[k, i] + seed[k, s] + residual[k, s, i]

In a paired difference the item term cancels. What remains is each strategy's seed-to-seed
noise, estimated from the spread of its per-seed means and pooled over all strategies (three
seeds alone give two degrees of freedom: a test on them alone is far too often wrong, as the
calibration test shows), and the strategy-by-item interaction, estimated from the two-way
table of the difference. A t-distribution with Satterthwaite's degrees of freedom gives the
interval and the p-value. One seed leaves the seed noise unknown, so one seed never separates
anything. A strategy's own interval is the same model on its values alone (there the item
variance stays: other items would give another mean). Many pairs: Holm's step-down method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

METHOD = "paired mixed model: seed noise pooled over strategies + strategy-by-item variance, Satterthwaite t"


@dataclass
class Estimate:
    value: float
    se: float | None  # None: one seed, the seed-to-seed variance is unknown
    df: float | None

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        if self.se is None:
            return None
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.value - half, self.value + half

    def bound(self, side: int, level: float = 0.95) -> float | None:
        """One-sided bound: the largest (side +1) or smallest (side -1) value the data leave plausible."""
        if self.se is None:
            return None
        return self.value + side * stats.t.ppf(level, self.df) * self.se

    @property
    def p(self) -> float | None:
        if self.se is None:
            return None
        if self.se == 0:
            return 1.0 if self.value == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.value) / self.se, self.df))


@dataclass
class SeedNoise:
    """How much a strategy's mean moves from seed to seed: the mean square of its per-seed means (times the
    item count), pooled over every strategy of the comparison, with its degrees of freedom."""

    mean_square: float
    df: int


def seed_noise(tables: list[np.ndarray]) -> SeedNoise | None:
    """Pooled over strategies: three seeds alone say little about seed noise, twelve runs of four strategies
    say more (each strategy's seeds vary about its own mean; the spread is taken to be alike)."""
    seeds, items = np.asarray(tables[0]).shape
    if seeds < 2:
        return None
    squares = sum(
        items * float(((np.asarray(t).mean(axis=1) - np.asarray(t).mean()) ** 2).sum())
        for t in tables
    )
    return SeedNoise(squares / (len(tables) * (seeds - 1)), len(tables) * (seeds - 1))


def item_variance(table: np.ndarray) -> float:
    """The variance of items' own effects in a seeds x items table (seed-to-seed noise taken out), at least 0."""
    seeds, items = table.shape
    if items < 2:
        return 0.0
    grand = table.mean()
    seed_means, item_means = table.mean(axis=1), table.mean(axis=0)
    ms_item = seeds * float(((item_means - grand) ** 2).sum()) / (items - 1)
    residual = table - seed_means[:, None] - item_means[None, :] + grand
    ms_error = float((residual**2).sum()) / ((seeds - 1) * (items - 1)) if seeds > 1 else 0.0
    return max(0.0, (ms_item - ms_error) / seeds)


def _combine(
    value: float, seed_part: float, seed_df: int, item_part: float, items: int
) -> Estimate:
    """Two independent variance terms, and Satterthwaite's degrees of freedom for their sum."""
    total = seed_part + item_part
    if total <= 0:
        return Estimate(value, 0.0, float(seed_df))
    denominator = seed_part**2 / seed_df + (
        item_part**2 / (items - 1) if item_part > 0 and items > 1 else 0.0
    )
    return Estimate(value, math.sqrt(total), total**2 / denominator)


def estimate(table: np.ndarray, noise: SeedNoise | None) -> Estimate:
    """A strategy's mean over its seeds x items table, with the error both seeds and items give it."""
    table = np.asarray(table, dtype=float)
    seeds, items = table.shape
    if noise is None or seeds < 2:
        return Estimate(float(table.mean()), None, None)
    return _combine(
        float(table.mean()),
        noise.mean_square / (items * seeds),
        noise.df,
        item_variance(table) / items,
        items,
    )


def paired(a: np.ndarray, b: np.ndarray, noise: SeedNoise | None) -> Estimate:
    """a minus b on the same items: item difficulty cancels; both strategies' seed noise and their
    item-by-strategy interaction remain."""
    difference = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    seeds, items = difference.shape
    if noise is None or seeds < 2:
        return Estimate(float(difference.mean()), None, None)
    return _combine(
        float(difference.mean()),
        2 * noise.mean_square / (items * seeds),
        noise.df,
        item_variance(difference) / items,
        items,
    )


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment; a missing p (one seed) stays missing and does not count as a test."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[index] = running
    return adjusted


def seeds_needed(
    noise: SeedNoise,
    strategies: int,
    difference: np.ndarray,
    gap: float,
    tests: int,
    limit: int = 64,
) -> int | None:
    """The fewest seeds at which a gap this large would likely (80%) pass a Bonferroni-corrected test over
    ``tests`` pairs, from the noise seen; None when no number up to ``limit`` does it (items are the limit)."""
    seeds, items = np.asarray(difference).shape
    if gap == 0:
        return None
    per_seed = noise.mean_square * 2 / items  # the seed term times the seed count
    item_part = item_variance(np.asarray(difference, dtype=float)) / items
    for n in range(2, limit + 1):
        guess = _combine(gap, per_seed / n, strategies * (n - 1), item_part, items)
        if (
            abs(gap)
            >= (stats.t.ppf(1 - 0.05 / (2 * tests), guess.df) + stats.norm.ppf(0.8)) * guess.se
        ):
            return n
    return None


def items_are_the_limit(difference: np.ndarray, gap: float, tests: int) -> bool:
    """Whether the item-by-strategy term alone keeps a gap this large from showing, however many seeds run:
    then only more distinct items would help, and the eval set may not have them."""
    seeds, items = np.asarray(difference).shape
    needed = stats.norm.ppf(1 - 0.05 / (2 * tests)) + stats.norm.ppf(0.8)
    return abs(gap) < needed * math.sqrt(item_variance(np.asarray(difference, dtype=float)) / items)
