"""The alignment–performance correlation (Marczak et al., ICML 2025, Fig. 3): SAR_avg against
NAI over tasks × methods, with Pearson's r and Spearman's ρ, their two-sided p-values
(scipy.stats) and n. Pairs with a missing value are dropped; fewer than 3 pairs, or a constant
variable, give NaN statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

NAN = float("nan")


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """{"pearson", "pearson_p", "spearman", "spearman_p", "n"} of the finite (x, y) pairs."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    n = int(len(xs))
    if n < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"pearson": NAN, "pearson_p": NAN, "spearman": NAN, "spearman_p": NAN, "n": n}
    pearson, spearman = stats.pearsonr(xs, ys), stats.spearmanr(xs, ys)
    return {"pearson": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman": float(spearman.statistic), "spearman_p": float(spearman.pvalue), "n": n}


def sar_nai_correlation(points: pd.DataFrame) -> dict[str, float | int]:
    """Correlation of the ``sar_avg`` and ``nai`` columns (one row per method × task)."""
    return correlation(points["sar_avg"].to_numpy(), points["nai"].to_numpy())


def least_squares_line(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares fit y ≈ slope·x + intercept (NaN if undefined)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    if keep.sum() < 2 or np.ptp(xs[keep]) == 0:
        return NAN, NAN
    slope, intercept = np.polyfit(xs[keep], ys[keep], 1)
    return float(slope), float(intercept)

