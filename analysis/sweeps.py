"""Sweeps: accuracy as one parameter moves, through one ``Evaluator`` (so one ``Merger``: the
decompositions are computed once and only the cheap recombination runs per point).

- ``fraction_sweep``: Iso-CTS accuracy against ``common_fraction`` (Marczak et al., ICML 2025,
  Fig. 5);
- ``param_sweep``: any method against one of its parameters (the Common-subspace view sweeps
  each method's ``Param.sweep``, e.g. CART's ``rank_ratio``: Choi et al., Fig. 3);
- ``alpha_sweep``: any method against α.

Each point is looked up in the result store first, so a killed sweep resumes where it stopped.
Rows are tidy: ``method, param, value, alpha, split, task, accuracy, zero_shot, finetuned,
normalized, nai`` (test and val at the α used for that point).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.alpha import ALPHA_GRID
from analysis.evaluation import SPLITS, Evaluator
from analysis.metrics import mean_se
from merging.progress import Progress, silent

log = logging.getLogger(__name__)

ALPHA_PARAM = "alpha"


def fractions(step: float = 0.1) -> list[float]:
    """0, step, …, 1 (rounded, 1 included)."""
    n = int(round(1.0 / step))
    return [round(i * step, 6) for i in range(n + 1)]


def _point(ev: Evaluator, method: str, params: Mapping[str, Any], alpha: float | None,
           param: str, value: float, splits: Sequence[str], start: float | None = None) -> tuple[pd.DataFrame, float]:
    out, choice = ev.table(method, params, alpha, splits, start)
    out.insert(1, "param", param)
    out.insert(2, "value", float(value))
    return out, choice.alpha


def param_sweep(ev: Evaluator, method: str, param: str, values: Sequence[float],
                params: Mapping[str, Any] | None = None, alpha: float | None = None,
                progress: Progress | None = None, splits: Sequence[str] = SPLITS,
                warm_start: bool = True) -> pd.DataFrame:
    """Accuracy of ``method`` as ``param`` takes each of ``values`` (others from ``params``);
    α fixed when given (or by the method), else chosen on validation at every point (the first
    point searches coarse-to-fine, the next ones hill-climb from the previous point's α when
    ``warm_start``). Rows for each of ``splits`` (a fixed-α sweep plotting only test accuracy
    may pass ("test",))."""
    report = progress or silent
    frames, previous = [], None
    for i, value in enumerate(values):
        report(i / len(values), f"{method}: {param} = {value:g}")
        frame, chosen = _point(ev, method, {**(params or {}), param: value}, alpha, param, value, splits,
                               previous if warm_start else None)
        frames.append(frame)
        previous = chosen
        log.info("%s %s=%g done (%d/%d)", method, param, value, i + 1, len(values))
    report(1.0, f"{method}: {len(values)} points")
    return pd.concat(frames, ignore_index=True)


def fraction_sweep(ev: Evaluator, values: Sequence[float] | None = None, params: Mapping[str, Any] | None = None,
                   alpha: float | None = None, progress: Progress | None = None,
                   splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """Iso-CTS against the common-subspace fraction (default 0, 0.1, …, 1)."""
    return param_sweep(ev, "iso_cts", "common_fraction", values if values is not None else fractions(0.1),
                       params, alpha, progress, splits)


def alpha_sweep(ev: Evaluator, method: str, params: Mapping[str, Any] | None = None,
                alphas: Sequence[float] = ALPHA_GRID, progress: Progress | None = None) -> pd.DataFrame:
    """``method`` at each α of ``alphas`` (test and val)."""
    report = progress or silent
    frames = []
    for i, a in enumerate(alphas):
        report(i / len(alphas), f"{method}: α = {a:g}")
        frames.append(_point(ev, method, dict(params or {}), a, ALPHA_PARAM, a, SPLITS)[0])
    report(1.0, f"{method}: {len(alphas)} values of α")
    return pd.concat(frames, ignore_index=True)


def sweep_average(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks per (method, param, value, alpha, split): the curves' "average" line, with
    the standard error of the mean accuracy in ``se`` (NaN unless the accuracies were sampled)."""
    keys = ["method", "param", "value", "alpha", "split"]
    groups = table.groupby(keys, sort=False)
    mean = groups[["accuracy", "normalized", "nai"]].mean()
    if "se" in table:
        mean["se"] = groups["se"].agg(mean_se)
    return mean.reset_index()
