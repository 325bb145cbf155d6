"""Normalized accuracy and NAI arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import accuracy_table, binomial_se, mean_normalized, mean_se, nai, normalized_accuracy


def test_closed_form_values() -> None:
    assert normalized_accuracy(0.6, 0.8) == pytest.approx(0.75)
    assert nai(0.6, 0.4, 0.8) == pytest.approx(0.5)  # (0.6 − 0.4) / (0.8 − 0.4)
    assert nai(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # worse than zero-shot: negative
    assert nai(0.9, 0.4, 0.8) == pytest.approx(1.25)  # better than fine-tuned: above 1


def test_zero_denominators_give_nan() -> None:
    assert math.isnan(normalized_accuracy(0.5, 0.0))
    assert math.isnan(nai(0.5, 0.7, 0.7))


def test_vectorised_and_series() -> None:
    out = nai(np.array([0.5, 0.9]), np.array([0.1, 0.5]), np.array([0.9, 0.5]))
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1])
    series = normalized_accuracy(pd.Series([0.2, 0.4], index=["a", "b"]), pd.Series([0.4, 0.8], index=["a", "b"]))
    assert list(series.index) == ["a", "b"] and series.tolist() == pytest.approx([0.5, 0.5])


def test_accuracy_table_rows() -> None:
    table = accuracy_table("ta", 0.3, "test", {"A": 0.6, "B": 0.5}, {"A": 0.4, "B": 0.5}, {"A": 0.8, "B": 1.0})
    assert list(table["task"]) == ["A", "B"]
    assert table["normalized"].tolist() == pytest.approx([0.75, 0.5])
    assert table["nai"].tolist() == pytest.approx([0.5, 0.0])
    assert set(table["alpha"]) == {0.3} and set(table["split"]) == {"test"}


def test_mean_normalized() -> None:
    assert mean_normalized({"A": 0.6, "B": 0.5}, {"A": 0.8, "B": 1.0, "C": 0.3}) == pytest.approx((0.75 + 0.5) / 2)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93, 1.0])
@pytest.mark.parametrize("n", [1, 7, 100, 4000])
def test_binomial_standard_error(p: float, n: int) -> None:
    assert binomial_se(p, n) == pytest.approx(math.sqrt(p * (1 - p) / n))
    assert math.isnan(binomial_se(p, None))  # a full split has no sampling error
    table = accuracy_table("ta", 1.0, "test", {"A": p, "B": p}, {"A": 0.0, "B": 0.0}, {"A": 1.0, "B": 1.0}, {"A": n})
    assert table["se"].iloc[0] == pytest.approx(binomial_se(p, n)) and math.isnan(table["se"].iloc[1])
    assert mean_se(table["se"]) == pytest.approx(binomial_se(p, n) / 2)  # one sampled task of two
    assert mean_se([binomial_se(p, n)] * 4) == pytest.approx(binomial_se(p, n) / 2)  # √4·se / 4


def test_mean_se_of_full_splits_is_nan() -> None:
    assert math.isnan(mean_se([math.nan, math.nan]))
