"""The current zoo's SAR–NAI points for the Alignment view and the Learn tour: SAR_avg per
method × task under one k_M rule, NAI at the sidebar's α (evaluations come from the result
store when stored), joined by ``analysis.correlation.sar_nai_points``, the function the report
uses too. None when the zoo has no evaluation data."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.correlation import sar_nai_points
from analysis.sar import sar_average
from merging.registry import all_methods
from ui import data
from ui.core import progress_bar
from ui.models import current_evaluator, current_zoo
from ui.state import alpha_choice, params_for


def sar_averages(methods: Sequence[str], rule: str, value: float) -> pd.DataFrame:
    """SAR_avg per method (registry name) × task: method, task, sar_avg."""
    zoo, dec = current_zoo(), current_evaluator().decompositions
    tables = [data.sar_table(zoo.fingerprint, dec, m, params_for(m), value, rule, alpha_choice()) for m in methods]
    return sar_average(pd.concat(tables, ignore_index=True))


def nai_table(methods: Sequence[str]) -> pd.DataFrame:
    """NAI per method (registry name) × task on the test split, at the sidebar's α."""
    ev, registry, rows = current_evaluator(), all_methods(), []
    with progress_bar("Evaluating the merged models for the scatter") as report:
        for i, m in enumerate(methods):
            report(i / len(methods), registry[m].display_name)
            table, _ = ev.table(m, dict(params_for(m)), alpha_choice())
            test = table[table["split"] == "test"]
            rows += [{"method": m, "task": t, "nai": v} for t, v in zip(test["task"], test["nai"])]
    return pd.DataFrame(rows, columns=["method", "task", "nai"])


def zoo_points(methods: Sequence[str], rule: str, value: float) -> pd.DataFrame | None:
    """method (registry name), task, sar_avg, nai over ``methods``; None without evaluation data."""
    if not current_zoo().has_data:
        return None
    methods = [m for m in methods if m in all_methods()]
    return sar_nai_points(sar_averages(methods, rule, value), nai_table(methods), methods)
