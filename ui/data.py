"""Derived tables behind the views, cached per zoo (``st.cache_data``, bounded by entries and
time). Heavy objects arrive as ``_``-prefixed arguments (not hashed); the zoo fingerprint and
the parameters key the cache. The per-layer work behind them runs first in ``prepare``, with a
progress bar, and is itself cached (memory and disk) by ``analysis.decompositions``."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from analysis.similarity import geometry_from_gram
from merging import settings
from ui.core import progress_bar, timed

BOUNDS = dict(max_entries=settings.value("view_cache_entries"), ttl=settings.value("view_cache_ttl"),
              show_spinner=False)


def _params(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return dict(items)


def prepare(dec: Any, methods: tuple[tuple[str, tuple], ...], keys: tuple[str, ...], label: str,
            spectra: bool = True, alpha: float | None = None) -> None:
    """Compute (or fetch from the store) the per-layer results ``keys`` × ``methods`` need (the
    spectra when ``spectra``, else what SAR needs) under a
    progress bar, layer by layer (every method on one layer before the next, so each layer is
    read once and its decompositions are shared), so the cached table builders below only
    assemble."""
    with timed(f"per-layer results: {label}"), progress_bar(label) as report:
        for i, layer in enumerate(keys):
            report(i / len(keys), dec.labels.get(layer, layer))
            if spectra:  # the layer is read once here, for all the methods below
                dec.spectra(layer)
            else:
                dec.norms(layer)
            merged = dec.merged_spectrum if spectra else dec.merged_layer  # spectra draw σ only; SAR projects
            for method, params in methods:
                merged(layer, method, _params(params), alpha)
        report(1.0, "done")


@st.cache_data(**BOUNDS)
def spectra(fingerprint: str, _dec: Any, methods: tuple[tuple[str, tuple], ...], keys: tuple[str, ...],
            alpha: float | None = None) -> pd.DataFrame:
    """Task, TA-sum and merged spectra of ``keys`` (``methods``: ((name, params items), ...))."""
    from analysis.spectra import spectra as build

    return build(_dec, {m: _params(p) for m, p in methods}, list(keys), alpha)


@st.cache_data(**BOUNDS)
def boundary(fingerprint: str, _dec: Any, fraction: float, keys: tuple[str, ...] | None = None) -> pd.DataFrame:
    from analysis.spectra import common_boundary

    return common_boundary(_dec, fraction, keys)


@st.cache_data(**BOUNDS)
def sar_table(fingerprint: str, _dec: Any, method: str, params: tuple, eps: float, rule: str,
              alpha: float | None = None) -> pd.DataFrame:
    """SAR per task × layer; ``eps`` is the value of the k_M ``rule`` (ε, or the figure threshold)."""
    from analysis.sar import sar_table as build

    return build(_dec, method, _params(params), eps, rule, alpha=alpha)


def geometry(dec: Any, keys: tuple[str, ...] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Task-vector norms and cosines over ``keys`` (None: every parameter): per-key Gram matrices
    (cached in memory and the store) summed one key at a time under a progress bar."""
    keys = keys if keys is not None else tuple(dec.merger.keys)
    total = 0.0
    with progress_bar("Task-vector geometry") as report:
        for i, k in enumerate(keys):
            total = total + dec.gram(k)
            report((i + 1) / len(keys), dec.labels.get(k, k))
    return geometry_from_gram(total, dec.tasks)
