"""The Learn tour's evidence from a real zoo (the embedded digits zoo in the app): what the toy of
``analysis.toy`` is too small to show, measured with real merges through one ``Evaluator`` (so
every accuracy comes from the result store after the first visit).

- the three tour methods (Task Arithmetic, Iso-C, Iso-CTS at its default fraction) with α chosen
  on validation: mean normalized test accuracy and NAI per task (Marczak et al., "No Task Left
  Behind", ICML 2025, Table 1's columns);
- SAR_avg against NAI over TA and Iso-C, under one k_M rule (the paper's Fig. 3a), with Pearson r
  over both methods and within TA;
- Iso-CTS's normalized accuracy against its common fraction (the paper's Fig. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.correlation import correlation, sar_nai_points
from analysis.evaluation import Evaluator
from analysis.sar import sar_average, sar_table
from analysis.sweeps import fraction_sweep, fractions
from merging.progress import Progress, silent
from merging.registry import get_method

METHODS = ("task_arithmetic", "iso_c", "iso_cts")
FIG3A_METHODS = ("task_arithmetic", "iso_c")


@dataclass(frozen=True)
class ZooEvidence:
    """The zoo's numbers the tour quotes. ``nai``: method, task, nai (test); ``points``: method,
    task, sar_avg, nai over FIG3A_METHODS; ``curve``: fraction, normalized (test, %) or None."""

    name: str
    tasks: tuple[str, ...]
    normalized: dict[str, float]  # method → mean normalized test accuracy (%)
    alpha: dict[str, float]
    nai: pd.DataFrame
    points: pd.DataFrame
    pearson: float
    pearson_ta: float
    n: int
    rule: str
    value: float
    curve: pd.DataFrame | None = None

    def task_nai(self, method: str) -> pd.Series:
        part = self.nai[self.nai["method"] == method]
        return pd.Series(part["nai"].to_numpy(), index=part["task"].to_numpy())


def zoo_evidence(ev: Evaluator, name: str, rule: str, value: float, progress: Progress | None = None,
                 curve: bool = False) -> ZooEvidence:
    """The tour's evidence on ``ev``'s zoo (needs evaluation data); ``curve`` adds the common
    fraction sweep (11 merges, each with its own α on validation)."""
    report = progress or silent
    normalized, alphas, rows = {}, {}, []
    for i, method in enumerate(METHODS):
        report(i / (len(METHODS) + 2), get_method(method).display_name)
        params = get_method(method).resolve(None)
        table, choice = ev.table(method, params)
        test = table[table["split"] == "test"]
        normalized[method] = float(100 * test["normalized"].mean())
        alphas[method] = float(choice.alpha)
        rows += [{"method": method, "task": t, "nai": float(v)} for t, v in zip(test["task"], test["nai"])]
    nai = pd.DataFrame(rows, columns=["method", "task", "nai"])
    report(len(METHODS) / (len(METHODS) + 2), "alignment (SAR)")
    sar = pd.concat([sar_table(ev.decompositions, m, get_method(m).resolve(None), value, rule) for m in FIG3A_METHODS],
                    ignore_index=True)
    points = sar_nai_points(sar_average(sar), nai[nai["method"].isin(FIG3A_METHODS)], FIG3A_METHODS)
    stats = correlation(points["sar_avg"], points["nai"])
    ta = points[points["method"] == "task_arithmetic"]
    sweep = fraction_curve(ev, progress) if curve else None
    report(1.0, "done")
    return ZooEvidence(name, tuple(ev.tasks), normalized, alphas, nai, points, float(stats["pearson"]),
                       float(correlation(ta["sar_avg"], ta["nai"])["pearson"]), int(stats["n"]), rule, float(value),
                       sweep)


def fraction_curve(ev: Evaluator, progress: Progress | None = None) -> pd.DataFrame:
    """Iso-CTS's mean normalized test accuracy (%) at f = 0, 0.1, …, 1, α on validation at each."""
    table = fraction_sweep(ev, fractions(0.1), progress=progress, splits=("val", "test"))
    test = table[table["split"] == "test"]
    out = test.groupby("value", sort=True)["normalized"].mean().mul(100).reset_index()
    return out.rename(columns={"value": "fraction"})
