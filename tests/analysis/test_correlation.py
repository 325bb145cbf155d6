"""Correlation against scipy on known data, and the least-squares fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.correlation import correlation, least_squares_line, sar_nai_correlation


def test_matches_scipy_and_drops_missing_pairs() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(20)
    y = 2 * x + 0.3 * rng.random(20)
    x_nan, y_nan = np.append(x, [np.nan, 0.5]), np.append(y, [0.1, np.nan])
    out = correlation(x_nan, y_nan)
    assert out["n"] == 20
    assert out["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert out["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert out["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert out["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)


def test_known_values() -> None:
    out = sar_nai_correlation(pd.DataFrame({"sar_avg": [0.1, 0.2, 0.3, 0.4], "nai": [1.0, 3.0, 5.0, 7.0]}))
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0) and out["n"] == 4
    anti = correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert anti["pearson"] == pytest.approx(-1.0) and anti["spearman"] == pytest.approx(-1.0)
    mono = correlation([1, 2, 3, 4], [1, 8, 27, 64])  # monotone, not linear
    assert mono["spearman"] == pytest.approx(1.0) and mono["pearson"] < 0.99


def test_degenerate_inputs_give_nan() -> None:
    assert math.isnan(correlation([1, 2], [3, 4])["pearson"])
    assert math.isnan(correlation([1, 1, 1], [1, 2, 3])["spearman"])


def test_least_squares_line() -> None:
    slope, intercept = least_squares_line([0, 1, 2, np.nan], [1, 3, 5, 100])
    assert (slope, intercept) == (pytest.approx(2.0), pytest.approx(1.0))
    assert all(math.isnan(v) for v in least_squares_line([1, 1], [0, 1]))


def test_sar_nai_points_keep_the_named_set_in_its_order() -> None:
    from analysis.correlation import DEFAULT_POINT_SET, FIG3A_METHODS, POINT_SETS, sar_nai_points

    methods = ["iso_c", "cart", "task_arithmetic"]
    avg = pd.DataFrame({"method": [m for m in methods for _ in "AB"], "task": list("AB") * 3,
                        "sar_avg": [0.9, 0.8, 0.5, 0.4, 0.7, 0.6]})
    nai = avg.rename(columns={"sar_avg": "nai"}).assign(nai=lambda d: d["nai"] - 0.1)
    points = sar_nai_points(avg, nai, FIG3A_METHODS)
    assert list(points["method"]) == ["task_arithmetic"] * 2 + ["iso_c"] * 2
    assert list(points["sar_avg"]) == [0.7, 0.6, 0.9, 0.8]
    assert list(points["nai"]) == pytest.approx([0.6, 0.5, 0.8, 0.7])
    assert POINT_SETS[DEFAULT_POINT_SET] == FIG3A_METHODS


def test_the_largest_set_is_every_registered_method_in_registry_order() -> None:
    from analysis.correlation import ALL_METHODS, DEFAULT_POINT_SET, POINT_SETS, set_methods
    from merging.registry import all_methods

    assert set_methods(ALL_METHODS) == tuple(all_methods()) and "weight_averaging" in set_methods(ALL_METHODS)
    assert set_methods(DEFAULT_POINT_SET) == ("task_arithmetic", "iso_c")
    for label in POINT_SETS:  # every named set is a subset of the largest
        assert set(set_methods(label)) <= set(set_methods(ALL_METHODS))
