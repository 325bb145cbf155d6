"""The alignment–performance correlation (Marczak et al., ICML 2025, Fig. 3): SAR_avg against
NAI over tasks × methods, with Pearson's r and Spearman's ρ, their two-sided p-values
(scipy.stats) and n. Pairs with a missing value are dropped; fewer than 3 pairs, or a constant
variable, give NaN statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from merging.registry import all_methods

NAN = float("nan")

# The method sets a SAR–NAI scatter can pool (and the Alignment view's bars compare), by label;
# the report and the Alignment view use the same ones, and the first is the default (Fig. 3a
# compares Task Arithmetic with Iso-C). None stands for every registered method, in registry
# order, so a method added later joins that set with nothing else edited.
FIG3A_METHODS = ("task_arithmetic", "iso_c")
ALL_METHODS = "all registered methods (the six and weight averaging)"
POINT_SETS: Mapping[str, tuple[str, ...] | None] = {
    "Fig. 3a: Task Arithmetic and Iso-C": FIG3A_METHODS,
    "six methods: TA, TIES, TSV-M, Iso-C, Iso-CTS, CART": ("task_arithmetic", "ties", "tsv_m", "iso_c", "iso_cts",
                                                           "cart"),
    ALL_METHODS: None,
}
DEFAULT_POINT_SET = next(iter(POINT_SETS))


def set_methods(label: str) -> tuple[str, ...]:
    """The registry names the method set ``label`` of ``POINT_SETS`` holds, in its order."""
    names = POINT_SETS[label]
    return tuple(all_methods()) if names is None else names


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


def sar_nai_points(sar_avg: pd.DataFrame, nai: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The SAR–NAI points over ``methods`` (registry names, in that order): ``sar_avg`` has
    method, task, sar_avg; ``nai`` has method, task, nai. One row per method × task present in
    both: method, task, sar_avg, nai. The report and the Alignment view both build theirs here."""
    keep = list(methods)
    points = sar_avg[sar_avg["method"].isin(keep)].merge(nai[nai["method"].isin(keep)], on=["method", "task"])
    order = {m: i for i, m in enumerate(keep)}
    points = points.sort_values("method", key=lambda c: c.map(order), kind="stable")
    return points[["method", "task", "sar_avg", "nai"]].reset_index(drop=True)


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

