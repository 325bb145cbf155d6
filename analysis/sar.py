"""Subspace Alignment Ratio, exactly as Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025, Eq. 5–6:

    k_M = min { k : ‖ΔM − Πk ΔM‖F ≤ ε ‖ΔM‖F }         (Eq. 6; Πk = Uk Ukᵀ, ΔM's top-k left vectors)
    SAR(Δt, ΔM) = ‖Π_{k_M} Δt‖F / ‖Δt‖F                 (Eq. 5)

Since ‖ΔM − Πk ΔM‖F² = Σ_{i>k} σi², k_M is read off the spectrum of ΔM; and since Uk has
orthonormal columns, ‖Πk Δt‖F = ‖Ukᵀ Δt‖F. SAR_avg(t) is the mean over the matrix layers.
Eq. 6 bounds the Frobenius *norm* of what is left out: at ε = 0.05 the kept directions hold
1 − ε² = 99.75% of the energy ‖ΔM‖F², not 95%.

Two rules for k_M (``K_M_RULES``, chosen by name):
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

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.decompositions import Decompositions
from merging.linalg import svd
from merging.registry import get_method

DEFAULT_EPS = 0.05
COLUMNS = ["method", "task", "key", "layer", "sar", "k_m", "r"]


def alignment_rank(sigma: torch.Tensor | np.ndarray, eps: float = DEFAULT_EPS) -> int:
    """k_M of Eq. 6 from the singular values σ (descending) of ΔM; 0 for a zero matrix."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])  # tail[k] = Σ_{i>k} σi², k = 0..r
    return int(np.argmax(np.sqrt(tail) <= eps * np.sqrt(s2.sum())))


def figure_rank(sigma: torch.Tensor | np.ndarray, threshold: float = 0.95) -> int:
    """k_M of the authors' figure script: the number of directions before the first whose
    cumulative norm √(Σ_{i≤k} σi² / Σ σi²) exceeds ``threshold``; 0 for a zero matrix."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    total = s2.sum()
    if total == 0:
        return 0
    above = np.sqrt(np.cumsum(s2) / total) > threshold  # (r,)
    return int(np.argmax(above)) if above.any() else len(s2)


K_M_RULES = {"eq6": alignment_rank, "figure": figure_rank}
K_M_DEFAULTS = {"eq6": DEFAULT_EPS, "figure": 0.95}
K_M_RANGES = {"eq6": ((lambda v: 0.0 <= v < 1.0), "[0, 1)"), "figure": ((lambda v: 0.0 < v <= 1.0), "(0, 1]")}
DEFAULT_RULE = "figure"


def rank_by_rule(sigma: torch.Tensor | np.ndarray, rule: str = DEFAULT_RULE, value: float | None = None) -> int:
    """k_M by ``rule`` ("eq6" with ε, or "figure" with its threshold); ``value`` None: its default."""
    if rule not in K_M_RULES:
        raise ValueError(f"unknown k_M rule {rule!r}; choose one of {sorted(K_M_RULES)}")
    value = K_M_DEFAULTS[rule] if value is None else value
    valid, interval = K_M_RANGES[rule]
    if not valid(value):
        raise ValueError(f"the {rule} rule's value must be in {interval}, got {value}")
    return K_M_RULES[rule](sigma, value)


def tied_blocks(sigma: torch.Tensor, rtol: float = 1e-5) -> list[tuple[int, int]]:
    """[(start, stop)] of every run of ≥ 2 singular values (descending) equal within ``rtol``·σ1."""
    s = np.asarray(sigma.detach().cpu() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)  # (r,)
    tol = rtol * float(s[0]) if len(s) else 0.0
    blocks, start = [], 0
    while start < len(s):
        stop = start + 1
        while stop < len(s) and s[start] - s[stop] <= tol:
            stop += 1
        if stop - start > 1:
            blocks.append((start, stop))
        start = stop
    return blocks


def order_ties(u: torch.Tensor, sigma: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5,
               cut: int | None = None) -> torch.Tensor:
    """``u`` (m, r) with each tied block of ``sigma`` rotated so that its directions come in the
    order of how much of ``reference`` (m, n) they hold (float64; signs are arbitrary, which no
    projection sees). With ``cut`` = k, only the block that straddles k is rotated: it is the
    only one the span of the top k depends on."""
    blocks = [(a, b) for a, b in tied_blocks(sigma, rtol) if cut is None or a < cut < b]
    out = u.to(torch.float64).clone()
    ref = reference.to(out.device, torch.float64)
    for a, b in blocks:
        x = out[:, a:b].T @ ref  # (b−a, n): the reference seen from the block
        _, w = torch.linalg.eigh(x @ x.T)  # (b−a, b−a), ascending: the Gram route, cheaper than an SVD of x
        out[:, a:b] = out[:, a:b] @ w.flip(-1).contiguous()
    return out


def ordered_basis(merged: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, σ) of ``merged`` (m, n), every tied block ordered by ``reference`` (module doc)."""
    u, s, _ = torch.linalg.svd(merged.double(), full_matrices=False)  # (m, r), (r,)
    return order_ties(u, s, reference, rtol), s


def alignment_ratio(task: torch.Tensor, basis: torch.Tensor) -> float:
    """‖U Uᵀ Δt‖F / ‖Δt‖F for ``basis`` U (m, k) with orthonormal columns; NaN when Δt = 0."""
    norm = float(torch.linalg.matrix_norm(task.to(torch.float64)))  # task: (m, n)
    if norm == 0.0:
        return float("nan")
    projected = basis.to(torch.float64).T @ task.to(basis.device, torch.float64)  # (k, n)
    return float(torch.linalg.matrix_norm(projected)) / norm


def sar(task: torch.Tensor, merged: torch.Tensor, eps: float = DEFAULT_EPS, rule: str = "eq6",
        reference: torch.Tensor | None = None) -> float:
    """SAR(Δt, ΔM) of Eq. 5 for two single matrices (a plain, uncached entry point); ``eps`` is
    the ``rule``'s value. With ``reference`` (the TA sum), ties are broken by ``ordered_basis``."""
    u, s = ordered_basis(merged, reference) if reference is not None else svd(merged)[:2]  # (m, r), (r,)
    return alignment_ratio(task, u[:, :rank_by_rule(s, rule, eps)])


def sar_table(dec: Decompositions, method: str, params: Mapping[str, Any] | None = None,
              eps: float = DEFAULT_EPS, rule: str = "eq6") -> pd.DataFrame:
    """SAR per task × matrix layer for ``method``'s merged update, with k_M and r per layer.
    ``eps`` is the value of the k_M ``rule`` (ε for "eq6", the threshold for "figure")."""
    rank_by_rule(np.ones(1), rule, eps)  # validates the rule and its value
    merged = dec.merged(method, params)
    name = get_method(method).name
    rows = []
    for key in dec.keys:
        u, s = merged[key].u, merged[key].s  # (m, r), (r,)
        k_m = rank_by_rule(s, rule, eps)
        if any(a < k_m < b for a, b in tied_blocks(s)):  # the cut splits a flat block: break the tie
            u = order_ties(u, s, torch.stack(dec.task_matrices(key)).sum(0), cut=k_m)
        basis = u[:, :k_m]  # (m, k_M)
        for task, delta in zip(dec.tasks, dec.task_matrices(key)):
            rows.append((name, task, key, dec.labels[key], alignment_ratio(delta, basis), k_m, len(merged[key].s)))
    return pd.DataFrame(rows, columns=COLUMNS)


def sar_average(table: pd.DataFrame) -> pd.DataFrame:
    """SAR_avg(t): the mean SAR over the matrix layers, per method and task."""
    out = table.groupby(["method", "task"], sort=False)["sar"].mean().rename("sar_avg")
    return out.reset_index()


def merged_ranks(table: pd.DataFrame) -> pd.DataFrame:
    """k_M (and r) per method and layer, from a ``sar_table``."""
    return table.drop_duplicates(["method", "key"])[["method", "key", "layer", "k_m", "r"]].reset_index(drop=True)
