"""The numbers behind "better": spreads over seeds, intervals for exact match, and whether two
strategies differ by more than their noise.

Eval loss and KL vary with the seed (data order, LoRA init) on a fixed eval set, so two
strategies differ on them when Welch's t-test over their seeds says so at the 5% level; one
seed has no spread, so one seed never separates them. Exact match is pooled over seeds and
items: a Wilson interval per strategy, a two-proportion z-test between two.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

Z95 = 1.959964  # two-sided 95%
Z80_POWER = 0.841621  # the extra margin for an 80% chance of seeing a real difference


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values: no spread is known)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def wilson(successes: int, total: int) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (sound at 0% and 100%, where the normal one is not)."""
    if total <= 0:
        return None
    p = successes / total
    centre = (p + Z95**2 / (2 * total)) / (1 + Z95**2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / (1 + Z95**2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def seeds_differ(a: list[float], b: list[float]) -> bool:
    """Welch's t-test over per-seed values at the 5% level; False where a spread is unknown."""
    if len(a) < 2 or len(b) < 2:
        return False
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return statistics.fmean(a) != statistics.fmean(b)
    return bool(stats.ttest_ind(a, b, equal_var=False).pvalue < 0.05)


def proportions_differ(hits_a: int, total_a: int, hits_b: int, total_b: int) -> bool:
    """Two-proportion z-test at the 5% level."""
    if not total_a or not total_b:
        return False
    pooled = (hits_a + hits_b) / (total_a + total_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if spread == 0:
        return False  # both at 0% or both at 100%
    return abs(hits_a / total_a - hits_b / total_b) / spread > Z95


def seeds_needed(a: list[float], b: list[float]) -> int | None:
    """About how many seeds per strategy a difference this large needs to show (80% power, 5% level)."""
    if len(a) < 2 or len(b) < 2:
        return None
    gap = abs(statistics.fmean(a) - statistics.fmean(b))
    variance = (statistics.variance(a) + statistics.variance(b)) / 2
    if gap == 0:
        return None  # no difference seen at all: no number of seeds is "likely" to show one
    return max(2, math.ceil(2 * variance * (Z95 + Z80_POWER) ** 2 / gap**2) + 1)


def items_needed(rate_a: float, rate_b: float) -> int | None:
    """About how many scored answers per strategy a gap between two exact-match rates needs to show."""
    gap = abs(rate_a - rate_b)
    if gap == 0:
        return None
    return math.ceil((Z95 + Z80_POWER) ** 2 * (rate_a * (1 - rate_a) + rate_b * (1 - rate_b)) / gap**2)
