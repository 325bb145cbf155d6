"""α selection: coarse-to-fine finds the grid argmax of a unimodal curve with fewer evaluations."""

from __future__ import annotations

import math

import pytest

from analysis.alpha import ALPHA_GRID, fixed_alpha, search_alpha


def test_grid_is_point_one_to_three() -> None:
    assert len(ALPHA_GRID) == 30 and ALPHA_GRID[0] == 0.1 and ALPHA_GRID[-1] == 3.0 and ALPHA_GRID[12] == 1.3


@pytest.mark.parametrize("peak", ALPHA_GRID)
@pytest.mark.parametrize("shape", ["tent", "skewed"])
def test_finds_argmax_of_unimodal_curve_with_few_evaluations(peak: float, shape: str) -> None:
    calls: list[float] = []

    def score(alpha: float) -> float:
        calls.append(alpha)
        d = alpha - peak
        return 0.9 - (abs(d) if shape == "tent" else (0.2 * d if d > 0 else -3 * d))

    result = search_alpha(score)
    assert result.alpha == peak
    assert result.score == pytest.approx(0.9)
    assert len(calls) == len(set(calls)) == result.evaluations  # each α scored at most once
    assert result.evaluations <= 12 < len(ALPHA_GRID)


def test_plateau_keeps_first_best_and_fixed_alpha() -> None:
    result = search_alpha(lambda a: min(a, 1.0))  # flat from α = 1.0 on
    assert result.alpha == 1.0 and result.score == 1.0
    fixed = fixed_alpha(0.125, lambda a: 2 * a)
    assert fixed.alpha == 0.125 and fixed.score == 0.25 and fixed.evaluations == 1
    assert fixed_alpha(0.5).evaluations == 0


@pytest.mark.parametrize(("peak", "start"), [(1.5, 1.4), (1.5, 1.5), (0.1, 0.3), (3.0, 2.6), (2.0, 0.1)])
def test_warm_start_hill_climbs_to_the_argmax(peak: float, start: float) -> None:
    result = search_alpha(lambda a: -abs(a - peak), start=start)
    steps = round(abs(peak - start) * 10)
    assert result.alpha == peak and result.evaluations <= steps + 3


def test_nan_scores_rank_last_and_the_search_ends() -> None:
    # a NaN score (mean normalized accuracy when a fine-tuned accuracy is 0, likely on a small
    # sample) used to make the hill-climb compare NaN forever
    nan = float("nan")
    assert search_alpha(lambda a: nan).alpha == ALPHA_GRID[0]  # all tied at -inf: the smallest α, as any tie
    peak = search_alpha(lambda a: nan if a > 1.0 else -abs(a - 0.7))
    assert peak.alpha == pytest.approx(0.7) and math.isfinite(peak.score)
