"""Summaries of repeated runs: Student's t quantiles, Welch's interval, and the verdict a report draws."""

from __future__ import annotations

import math
import random

import pytest

from gru_lm.analysis.stats import difference, spread, t_quantile


@pytest.mark.parametrize(
    "df, expected",
    [
        (1, 12.706),
        (2, 4.303),
        (3, 3.182),
        (4, 2.776),
        (5, 2.571),
        (10, 2.228),
        (30, 2.042),
        (120, 1.980),
        (10_000, 1.960),
    ],
)
def test_t_quantiles_match_the_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_spread_of_values():
    s = spread([1.0, 2.0, 4.0])
    assert (s.n, s.mean, s.low, s.high) == (3, pytest.approx(7 / 3), 1.0, 4.0)
    assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(spread([3.0]).std)


def test_welch_interval_by_hand():
    a, b = [1.40, 1.42, 1.41], [1.50, 1.47, 1.52]
    d = difference(a, b)
    va, vb = spread(a).std ** 2 / 3, spread(b).std ** 2 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert d.diff == pytest.approx(-0.0867, abs=1e-4) and d.df == pytest.approx(df)
    assert (d.low, d.high) == (pytest.approx(d.diff - half), pytest.approx(d.diff + half))
    assert d.decided  # 0.087 apart with a spread of ~0.02: the interval excludes zero


def test_overlapping_runs_are_not_called_better():
    assert not difference([1.41, 1.43, 1.42], [1.42, 1.41, 1.44]).decided
    one = difference([1.4], [1.5, 1.6])
    assert math.isnan(one.low) and not one.decided  # one run: no interval, no verdict


def test_the_interval_covers_the_true_difference_about_95_in_100():
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        a = [rng.gauss(0.0, 1.0) for _ in range(3)]
        b = [rng.gauss(0.5, 2.0) for _ in range(4)]
        d = difference(a, b)
        covered += d.low <= -0.5 <= d.high
    assert 0.93 < covered / 2000 < 0.975
