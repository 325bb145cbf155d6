"""Normalized accuracy and NAI arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import accuracy_table, mean_normalized, nai, normalized_accuracy


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
