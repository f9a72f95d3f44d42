"""Descriptive numbers: a spread over seeds, and the Wilson interval of one model's exact match
over its items (the base row: one model, no seeds). Whether two strategies differ, and every
interval over items and seeds, is inference.py's."""

from __future__ import annotations

import math
import statistics

Z95 = 1.959964  # two-sided 95%


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
