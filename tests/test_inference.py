"""Calibration of the verdict's statistics (comparison/inference.py), by simulation.

Per-item results are drawn with item difficulty and seed effects. With no true difference
between 4 strategies, the corrected paired tests must separate some pair in at most 5% of
comparisons (family-wise, plus Monte Carlo error); the pooled method they replace (every
seed's answers counted as new items, a two-proportion test per pair at 5%, no correction)
must visibly fail the same simulation, or the simulation is too easy to mean anything. With
a true difference of the size the seed hint promises, the test must find it 80% of the time.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from freezetune.comparison.inference import estimate, holm, paired, seed_noise, seeds_needed

STRATEGIES, SEEDS, ITEMS, RUNS = 4, 3, 100, 500


def exact_match_tables(rng, seed_sd: float, item_sd: float = 1.5, gaps=(0.0, 0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """0/1 answers per (seed, item) for each strategy: shared item difficulty, a per-(strategy, seed) effect."""
    difficulty = rng.normal(0.0, item_sd, ITEMS)
    tables = []
    for gap in gaps:
        logits = difficulty[None, :] + rng.normal(0.0, seed_sd, (SEEDS, 1)) + gap
        tables.append((rng.random((SEEDS, ITEMS)) < 1 / (1 + np.exp(-logits))).astype(float))
    return tables


def adjusted_p(tables: list[np.ndarray]) -> list[float | None]:
    """Every pair's p after Holm, pair (0, 1) first: as the verdict computes them."""
    noise = seed_noise(tables)
    return holm([paired(tables[a], tables[b], noise).p for a, b in itertools.combinations(range(len(tables)), 2)])


def separates(tables: list[np.ndarray]) -> bool:
    return any(p is not None and p < 0.05 for p in adjusted_p(tables))


def pooled_separates(tables: list[np.ndarray]) -> bool:
    """The old method: answers x seeds pooled as independent trials, a z-test per pair at 5%, uncorrected."""
    for a, b in itertools.combinations(tables, 2):
        hits_a, hits_b, n = a.sum(), b.sum(), a.size
        pooled = (hits_a + hits_b) / (2 * n)
        spread = math.sqrt(pooled * (1 - pooled) * 2 / n)
        if spread and abs(hits_a - hits_b) / n / spread > 1.959964:
            return True
    return False


@pytest.mark.parametrize("seed_sd", [0.3, 0.5])
def test_with_no_true_difference_the_verdict_separates_at_most_5_percent(seed_sd):
    rng = np.random.default_rng(20261202)
    runs = [exact_match_tables(rng, seed_sd) for _ in range(RUNS)]
    rate = sum(separates(tables) for tables in runs) / RUNS
    monte_carlo = 2 * math.sqrt(0.05 * 0.95 / RUNS)
    assert rate <= 0.05 + monte_carlo, rate
    old = sum(pooled_separates(tables) for tables in runs) / RUNS
    assert old > 0.15, old  # the pooled test fails this simulation: it is a real check


def eval_loss_tables(rng, seeds: int, gap: float) -> list[np.ndarray]:
    """An eval-loss-like value per (seed, item): item difficulty, a strategy's own easy and hard items,
    a per-(strategy, seed) shift and noise; strategy 0 is better by ``gap``."""
    difficulty = rng.normal(0, 0.3, ITEMS)
    return [difficulty + rng.normal(0, 0.1, ITEMS) + shift + rng.normal(0, 0.05, (seeds, 1)) + rng.normal(0, 0.4, (seeds, ITEMS))
            for shift in (gap, 0.0, 0.0, 0.0)]


def test_a_difference_of_the_size_the_hint_promises_is_found_80_percent_of_the_time():
    rng = np.random.default_rng(7)
    gap, tests = 0.12, math.comb(STRATEGIES, 2)
    # the hint, from a 2-seed comparison with this difference (averaged over a few, as it varies with the draw)
    hints = []
    for _ in range(20):
        tables = eval_loss_tables(rng, 2, gap)
        hints.append(seeds_needed(seed_noise(tables), STRATEGIES, tables[0] - tables[1], gap, tests))
    seeds = int(np.median([h for h in hints if h is not None]))
    assert 2 <= seeds <= 30, hints
    found = sum((p := adjusted_p(eval_loss_tables(rng, seeds, gap))[0]) is not None and p < 0.05 for _ in range(300))
    assert found / 300 >= 0.8, (found, seeds)


def test_one_seed_never_separates_and_holm_skips_what_it_cannot_test():
    one = estimate(np.array([[0.0, 1.0, 1.0]]), seed_noise([np.array([[0.0, 1.0, 1.0]])]))
    assert one.se is None and one.p is None and one.interval() is None
    assert holm([0.01, None, 0.04]) == [0.02, None, 0.04]
    assert holm([0.01, 0.02, 0.03]) == pytest.approx([0.03, 0.04, 0.04])


def test_the_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(400):
        tables = [1.0 + rng.normal(0, 0.5, (1, 60)) + rng.normal(0, 0.2, (4, 1)) + rng.normal(0, 0.3, (4, 60))
                  for _ in range(3)]
        low, high = estimate(tables[0], seed_noise(tables)).interval()
        covered += low <= 1.0 <= high
    assert 0.92 <= covered / 400 <= 0.99, covered
