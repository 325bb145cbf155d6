"""Derived tables behind the views, cached per zoo (``st.cache_data``, bounded by entries and
time). Heavy objects arrive as ``_``-prefixed arguments (not hashed); the zoo fingerprint and
the parameters key the cache."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from analysis.similarity import norms_and_cosines

BOUNDS = dict(max_entries=64, ttl=3600, show_spinner=False)


def _params(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return dict(items)


@st.cache_data(**BOUNDS)
def spectra(fingerprint: str, _dec: Any, methods: tuple[tuple[str, tuple], ...], keys: tuple[str, ...]) -> pd.DataFrame:
    """Task, TA-sum and merged spectra of ``keys`` (``methods``: ((name, params items), ...))."""
    from analysis.spectra import spectra as build  # imported once the engine has landed

    return build(_dec, {m: _params(p) for m, p in methods}, list(keys))


@st.cache_data(**BOUNDS)
def boundary(fingerprint: str, _dec: Any, fraction: float) -> pd.DataFrame:
    from analysis.spectra import common_boundary

    return common_boundary(_dec, fraction)


@st.cache_data(**BOUNDS)
def sar_table(fingerprint: str, _dec: Any, method: str, params: tuple, eps: float, rule: str = "eq6") -> pd.DataFrame:
    """SAR per task × layer; ``eps`` is the value of the k_M ``rule`` (ε, or the figure threshold)."""
    from analysis.sar import sar_table as build

    return build(_dec, method, _params(params), eps, rule)


@st.cache_data(**BOUNDS)
def geometry(fingerprint: str, _merger: Any, tasks: tuple[str, ...], keys: tuple[str, ...] | None
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Task-vector norms and cosines over ``keys`` (None: every parameter)."""
    tvs = _merger.task_vectors()
    if keys is not None:
        tvs = [{k: tv[k] for k in keys} for tv in tvs]
    return norms_and_cosines(tvs, list(tasks))
