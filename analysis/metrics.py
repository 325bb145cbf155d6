"""Accuracy arithmetic of docs/design.md, Analysis definitions (as in Marczak et al., ICML 2025, and Ilharco et al.,
"Editing Models with Task Arithmetic", ICLR 2023):

    normalized(t) = acc_merged(t) / acc_finetuned(t)
    NAI(t)        = (acc_merged(t) − acc_zero_shot(t)) / (acc_finetuned(t) − acc_zero_shot(t))

A zero denominator gives NaN (never an exception). Works on floats, arrays and Series.

An accuracy p measured on a sample of n images (the quick mode) carries its binomial standard
error sqrt(p(1 − p)/n) in the column ``se`` (NaN for a full split); the mean of T such
accuracies has sqrt(Σ se_t²)/T (``mean_se``), the tasks' samples being independent.
"""

from __future__ import annotations

from collections.abc import Mapping

import math

import numpy as np
import pandas as pd

ArrayLike = float | np.ndarray | pd.Series
TABLE_COLUMNS = ["method", "alpha", "split", "task", "accuracy", "zero_shot", "finetuned", "normalized", "nai", "se"]


def _safe_div(num: ArrayLike, den: ArrayLike) -> ArrayLike:
    den_arr = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num, dtype=np.float64) / np.where(den_arr == 0, np.nan, den_arr)
    if isinstance(num, pd.Series):
        return pd.Series(out, index=num.index)
    return float(out) if out.ndim == 0 else out


def normalized_accuracy(acc: ArrayLike, finetuned: ArrayLike) -> ArrayLike:
    """acc / acc_finetuned."""
    return _safe_div(acc, finetuned)


def nai(acc: ArrayLike, zero_shot: ArrayLike, finetuned: ArrayLike) -> ArrayLike:
    """Normalized accuracy improvement: (acc − acc₀) / (acc_ft − acc₀)."""
    return _safe_div(np.asarray(acc, dtype=np.float64) - np.asarray(zero_shot, dtype=np.float64),
                     np.asarray(finetuned, dtype=np.float64) - np.asarray(zero_shot, dtype=np.float64))


def accuracy_table(method: str, alpha: float | None, split: str, accuracy: Mapping[str, float],
                   zero_shot: Mapping[str, float], finetuned: Mapping[str, float],
                   sizes: Mapping[str, int | None] | None = None) -> pd.DataFrame:
    """One row per task: accuracy, its references, normalized accuracy, NAI, and the accuracy's
    standard error when ``sizes`` gives the task's sample size (NaN otherwise)."""
    tasks = list(accuracy)
    acc = np.array([accuracy[t] for t in tasks], dtype=np.float64)
    zs = np.array([zero_shot[t] for t in tasks], dtype=np.float64)
    ft = np.array([finetuned[t] for t in tasks], dtype=np.float64)
    return pd.DataFrame({"method": method, "alpha": alpha, "split": split, "task": tasks, "accuracy": acc,
                         "zero_shot": zs, "finetuned": ft, "normalized": normalized_accuracy(acc, ft),
                         "nai": nai(acc, zs, ft),
                         "se": [binomial_se(a, (sizes or {}).get(t)) for t, a in zip(tasks, acc)]},
                        columns=TABLE_COLUMNS)


def binomial_se(accuracy: float, n: int | None) -> float:
    """Standard error sqrt(p(1 − p)/n) of an accuracy p measured on n sampled images; NaN when
    ``n`` is None (the full split: no sampling error)."""
    if not n:
        return math.nan
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n)


def mean_se(se: ArrayLike) -> float:
    """Standard error of the mean of accuracies with independent standard errors ``se``
    (NaN when none of them is finite: no accuracy was sampled)."""
    values = np.asarray(se, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(np.sqrt(np.sum(finite ** 2)) / values.size) if finite.size else float("nan")


def mean_normalized(accuracy: Mapping[str, float], finetuned: Mapping[str, float]) -> float:
    """The α-selection score: mean normalized accuracy over the tasks of ``accuracy``."""
    tasks = list(accuracy)
    acc = np.array([accuracy[t] for t in tasks], dtype=np.float64)
    return float(np.mean(normalized_accuracy(acc, np.array([finetuned[t] for t in tasks], dtype=np.float64))))
