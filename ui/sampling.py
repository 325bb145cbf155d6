"""Accuracies measured on a sample (the quick mode's evaluation budget): the binomial standard
error shown beside them, in tables, metrics and captions. Every text here is computed from the
numbers it states (``analysis.metrics.binomial_se``, ``mean_se``)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from analysis.metrics import mean_se

SE_COLUMN = "se"
SE_HELP = "One binomial standard error, √(p(1 − p)/n), of an accuracy p measured on a sample of n images."


def sampled(frame: pd.DataFrame) -> bool:
    """Whether any accuracy of ``frame`` was measured on a sample (a finite ``se``)."""
    return SE_COLUMN in frame and bool(frame[SE_COLUMN].notna().any())


def plus_minus(se: float) -> str:
    """`` ± x.x%`` for a finite standard error, empty for a full split."""
    return f" ± {se:.1%}" if math.isfinite(se) else ""


def mean_with_se(frame: pd.DataFrame, column: str = "accuracy") -> str:
    """The mean of ``column`` as a percentage, with the standard error of that mean when sampled."""
    se = mean_se(frame[SE_COLUMN]) if sampled(frame) else math.nan
    return f"{frame[column].mean():.1%}{plus_minus(se)}"


def table_columns(frame: pd.DataFrame, columns: list[str], after: str = "accuracy") -> tuple[list[str], dict[str, Any]]:
    """``columns`` with the standard error right after ``after`` when ``frame`` was sampled, and the
    column configuration for it."""
    if not sampled(frame):
        return columns, {}
    at = columns.index(after) + 1
    return columns[:at] + [SE_COLUMN] + columns[at:], {
        SE_COLUMN: st.column_config.NumberColumn("± SE", format="percent", help=SE_HELP)}


def budget_caption(max_images: int | None, frame: pd.DataFrame) -> None:
    """Say, under a sampled table, what the ± means and how many images were scored."""
    if max_images and sampled(frame):
        st.caption(f"Accuracies on a stratified sample of at most {max_images} images per task and split "
                   f"(fixed seed); ± is one binomial standard error. Set the evaluation budget to 0 in the sidebar "
                   f"to score every image.")
