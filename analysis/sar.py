"""Subspace Alignment Ratio, exactly as Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025, Eq. 5–6:

    k_M = min { k : ‖ΔM − Πk ΔM‖F ≤ ε ‖ΔM‖F }         (Eq. 6; Πk = Uk Ukᵀ, ΔM's top-k left vectors)
    SAR(Δt, ΔM) = ‖Π_{k_M} Δt‖F / ‖Δt‖F                 (Eq. 5)

Since ‖ΔM − Πk ΔM‖F² = Σ_{i>k} σi², k_M is read off the spectrum of ΔM; and since Uk has
orthonormal columns, ‖Πk Δt‖F = ‖Ukᵀ Δt‖F. SAR_avg(t) is the mean over the matrix layers.
Eq. 6 bounds the Frobenius *norm* of what is left out: at ε = 0.05 the kept directions hold
1 − ε² = 99.75% of the energy ‖ΔM‖F², not 95%.

Two rules for k_M, one registry (``K_RULES``, chosen by name) read by every page, the report,
the CLI and the Learn tour, with one default (``DEFAULT_RULE``):
- ``"eq6"``: the paper's Eq. 6 with ε (``alignment_rank``);
- ``"figure"``: the rule of the authors' figure script (iso-merging ``fig_3a.py``, which drew
  Fig. 3a), with a threshold τ (0.95 there): the cumulative norm c_k = √(Σ_{i≤k} σi² / Σ σi²)
  is computed and the script keeps ``argmax(c > τ)`` directions, i.e. every direction *before*
  the first one that lifts c above τ (``figure_rank``). About ε ≈ 0.31 in Eq. 6 terms.
The figure rule is the default of the app and the report, since it reproduces Fig. 3a.

Ties. When ΔM has equal singular values (Iso-C and Iso-CTS flatten the whole spectrum), its
top-k directions are not unique and an SVD routine may return any basis of a tied block.
``order_ties`` fixes one, documented: inside each tied block, directions are ordered by how
much of a *reference* matrix they carry (the Task Arithmetic sum), which is what the figure
script does for Iso (it keeps the sum's own top-k vectors). ``sar_table`` applies it whenever
k_M cuts through a tied block (the only case where the basis changes SAR).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.basis import order_ties, ordered_basis, tied_blocks  # noqa: F401  (re-exported)
from analysis.k_rules import (DEFAULT_EPS, DEFAULT_RULE, K_RULES, KRule, alignment_rank,  # noqa: F401  (re-exported)
                              figure_rank, k_rule, rank_by_rule, rule_value)
from analysis.decompositions import Decompositions
from merging.linalg import svd
from merging.progress import Progress
from merging.registry import get_method

COLUMNS = ["method", "task", "key", "layer", "sar", "k_m", "r"]


def alignment_ratio(task: torch.Tensor, basis: torch.Tensor) -> float:
    """‖U Uᵀ Δt‖F / ‖Δt‖F for ``basis`` U (m, k) with orthonormal columns; NaN when Δt = 0."""
    norm = float(torch.linalg.matrix_norm(task.to(torch.float64)))  # task: (m, n)
    if norm == 0.0:
        return float("nan")
    projected = basis.to(torch.float64).T @ task.to(basis.device, torch.float64)  # (k, n)
    return float(torch.linalg.matrix_norm(projected)) / norm


def sar(task: torch.Tensor, merged: torch.Tensor, eps: float | None = None, rule: str = DEFAULT_RULE,
        reference: torch.Tensor | None = None) -> float:
    """SAR(Δt, ΔM) of Eq. 5 for two single matrices (a plain, uncached entry point); ``eps`` is
    the ``rule``'s value (None: its default). With ``reference`` (the TA sum), ties are broken by ``ordered_basis``."""
    u, s = ordered_basis(merged, reference) if reference is not None else svd(merged)[:2]  # (m, r), (r,)
    return alignment_ratio(task, u[:, :rank_by_rule(s, rule, eps)])


def sar_table(dec: Decompositions, method: str, params: Mapping[str, Any] | None = None,
              eps: float | None = None, rule: str = DEFAULT_RULE, keys: Iterable[str] | None = None,
              progress: Progress | None = None, alpha: float | None = None) -> pd.DataFrame:
    """SAR per task × matrix layer for ``method``'s update from θ0, with k_M and r per layer,
    over ``keys`` (default: every matrix layer), one layer at a time with progress. ``eps`` is
    the value of the k_M ``rule`` (ε for "eq6", the threshold for "figure"; None: its default).

    ‖Π_{k_M} Δt‖F² is the sum of the task's energy along ΔM's top k_M left vectors, which the
    decompositions keep per layer (tied directions already in ``order_ties``' order), so a new
    rule or value costs no product."""
    eps = rule_value(rule, eps)
    name = get_method(method).name
    merged = dec.merged(method, params, keys, progress, alpha)
    rows = []
    for key, layer in merged.items():
        k_m = rank_by_rule(layer.s, rule, eps)
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
