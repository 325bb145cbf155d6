"""Subspace Alignment Ratio, exactly as Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025, Eq. 5–6:

    k_M = min { k : ‖ΔM − Πk ΔM‖F ≤ ε ‖ΔM‖F }         (Eq. 6; Πk = Uk Ukᵀ, ΔM's top-k left vectors)
    SAR(Δt, ΔM) = ‖Π_{k_M} Δt‖F / ‖Δt‖F                 (Eq. 5)

Since ‖ΔM − Πk ΔM‖F² = Σ_{i>k} σi², k_M is read off the spectrum of ΔM; and since Uk has
orthonormal columns, ‖Πk Δt‖F = ‖Ukᵀ Δt‖F. SAR_avg(t) is the mean over the matrix layers.
(The authors' plotting script uses another threshold rule and one basis for all tasks; this is
the paper's definition, with ε adjustable.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.decompositions import Decompositions
from merging.linalg import svd
from merging.progress import Progress
from merging.registry import get_method

DEFAULT_EPS = 0.05
COLUMNS = ["method", "task", "key", "layer", "sar", "k_m", "r"]


def alignment_rank(sigma: torch.Tensor | np.ndarray, eps: float = DEFAULT_EPS) -> int:
    """k_M of Eq. 6 from the singular values σ (descending) of ΔM; 0 for a zero matrix."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])  # tail[k] = Σ_{i>k} σi², k = 0..r
    return int(np.argmax(np.sqrt(tail) <= eps * np.sqrt(s2.sum())))


def alignment_ratio(task: torch.Tensor, basis: torch.Tensor) -> float:
    """‖U Uᵀ Δt‖F / ‖Δt‖F for ``basis`` U (m, k) with orthonormal columns; NaN when Δt = 0."""
    norm = float(torch.linalg.matrix_norm(task.to(torch.float64)))  # task: (m, n)
    if norm == 0.0:
        return float("nan")
    projected = basis.to(torch.float64).T @ task.to(basis.device, torch.float64)  # (k, n)
    return float(torch.linalg.matrix_norm(projected)) / norm


def sar(task: torch.Tensor, merged: torch.Tensor, eps: float = DEFAULT_EPS) -> float:
    """SAR(Δt, ΔM) of Eq. 5 for two single matrices (a plain, uncached entry point)."""
    u, s, _ = svd(merged)  # (m, r), (r,)
    return alignment_ratio(task, u[:, :alignment_rank(s, eps)])


def sar_table(dec: Decompositions, method: str, params: Mapping[str, Any] | None = None,
              eps: float = DEFAULT_EPS, keys: Iterable[str] | None = None, progress: Progress | None = None,
              alpha: float | None = None) -> pd.DataFrame:
    """SAR per task × matrix layer for ``method``'s update from θ0, with k_M and r per layer,
    over ``keys`` (default: every matrix layer), one layer at a time with progress.

    ‖Π_{k_M} Δt‖F² is the sum of the task's energy along ΔM's top k_M left vectors, which the
    decompositions keep per layer, so a new ε costs no product."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    name = get_method(method).name
    merged = dec.merged(method, params, keys, progress, alpha)
    rows = []
    for key, layer in merged.items():
        k_m = alignment_rank(layer.s, eps)
        norms = dec.norms(key)  # (T,)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(norms > 0, layer.captured(k_m) / np.where(norms > 0, norms, 1.0), np.nan)  # (T,)
        rows += [(name, task, key, dec.labels[key], float(min(ratio, 1.0)), k_m, len(layer.s))
                 for task, ratio in zip(dec.tasks, ratios)]
    return pd.DataFrame(rows, columns=COLUMNS)


def sar_average(table: pd.DataFrame) -> pd.DataFrame:
    """SAR_avg(t): the mean SAR over the matrix layers, per method and task."""
    out = table.groupby(["method", "task"], sort=False)["sar"].mean().rename("sar_avg")
    return out.reset_index()


def merged_ranks(table: pd.DataFrame) -> pd.DataFrame:
    """k_M (and r) per method and layer, from a ``sar_table``."""
    return table.drop_duplicates(["method", "key"])[["method", "key", "layer", "k_m", "r"]].reset_index(drop=True)
