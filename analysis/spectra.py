"""Singular value spectra per matrix layer (docs/design.md, Analysis definitions): of each task matrix Δt, of
the Task Arithmetic sum Σt Δt before flattening, and of a method's merged update ΔM after
flattening (Iso-C/Iso-CTS, Marczak et al., "No Task Left Behind", ICML 2025, Eq. 3–4, flatten
the spectrum to σ̄). Also the cumulative energy Σ_{i≤k} σi² / Σ σi² and the Iso-CTS boundary
between the common and the task-specific subspace (``merging.methods.iso.common_rank``).

Every function returns a tidy DataFrame, one row per singular value:
``key, layer, source, kind, index (1-based), sigma, energy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.decompositions import Decompositions
from merging.methods.iso import common_rank
from merging.registry import get_method

SUM_SOURCE = "TA sum"
COLUMNS = ["key", "layer", "source", "kind", "index", "sigma", "energy"]


def cumulative_energy(sigma: np.ndarray | torch.Tensor) -> np.ndarray:
    """Σ_{i≤k} σi² / Σ σi² for k = 1..r (all zeros for a zero matrix)."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    total = s2.sum()
    return np.cumsum(s2) / total if total > 0 else np.zeros_like(s2)


def _frame(dec: Decompositions, key: str, source: str, kind: str, sigma: np.ndarray) -> dict[str, np.ndarray]:
    s = np.asarray(sigma, dtype=np.float64)  # (r,)
    r = len(s)
    return {"key": np.full(r, key, dtype=object), "layer": np.full(r, dec.labels[key], dtype=object),
            "source": np.full(r, source, dtype=object), "kind": np.full(r, kind, dtype=object),
            "index": np.arange(1, r + 1), "sigma": s, "energy": cumulative_energy(s)}


def _concat(parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in COLUMNS})


def task_spectra(dec: Decompositions, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """σ(Δt) for every task and matrix key; ``source`` is the task name."""
    parts = []
    for k in dec.keys_of(keys):
        sv = dec.spectra(k).task  # (T, r)
        parts += [_frame(dec, k, task, "task", s) for task, s in zip(dec.tasks, sv)]
    return _concat(parts)


def sum_spectra(dec: Decompositions, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """σ(Σt Δt), the Task Arithmetic sum before flattening; ``source`` is "TA sum"."""
    return _concat([_frame(dec, k, SUM_SOURCE, "sum", dec.spectra(k).total) for k in dec.keys_of(keys)])


def merged_spectra(dec: Decompositions, method: str, params: Mapping[str, Any] | None = None,
                   keys: Iterable[str] | None = None, alpha: float | None = None) -> pd.DataFrame:
    """σ(ΔM) of ``method``'s update from θ0 (see ``analysis.decompositions``: α = 1 except where
    α changes the update's shape, CART's mean(τt) + λ Σt c̃t)."""
    name = get_method(method).display_name
    return _concat([_frame(dec, k, name, "merged", dec.merged_spectrum(k, method, params, alpha))
                    for k in dec.keys_of(keys)])


def spectra(dec: Decompositions, methods: Mapping[str, Mapping[str, Any] | None] | None = None,
            keys: Iterable[str] | None = None, alpha: float | None = None) -> pd.DataFrame:
    """Tasks, the TA sum and each of ``methods`` ({name: params}) in one frame."""
    keys = dec.keys_of(keys)
    frames = [task_spectra(dec, keys), sum_spectra(dec, keys)]
    frames += [merged_spectra(dec, m, p, keys, alpha) for m, p in (methods or {}).items()]
    return pd.concat(frames, ignore_index=True)


def common_boundary(dec: Decompositions, common_fraction: float, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Per matrix key, where Iso-CTS's common subspace ends: ``r, k, s`` (nothing read or computed)."""
    rows = []
    for key in dec.keys_of(keys):
        r = dec.rank(key)
        k, s = common_rank(r, dec.merger.num_tasks, common_fraction)
        rows.append({"key": key, "layer": dec.labels[key], "r": r, "k": int(k), "s": int(s),
                     "common_fraction": float(common_fraction)})
    return pd.DataFrame(rows, columns=["key", "layer", "r", "k", "s", "common_fraction"])
