"""TSV-Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
Merging", CVPR 2025, arXiv:2412.00081, Sec. 4, Eq. 6–7).  docs/design.md, Methods.

Per task matrix: s = floor(r/T); each task's top-s singular triplets go side by side into
U (m, Ts), σ (Ts,), V (n, Ts); U and V are replaced by their orthogonal polar factors and
Δ = U⊥ diag(σ) V⊥ᵀ. Non-matrix parameters take the mean of the τt.
"""

from __future__ import annotations

import torch

from merging.linalg import polar
from merging.methods.common import Layer, Params, matrix_only
from merging.registry import Method, register


def task_rank(r: int, num_tasks: int) -> int:
    """s = floor(r / T): how many singular triplets each task keeps."""
    return r // num_tasks


def _tops(layer: Layer) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every task's top-s singular triplets (cached), s = floor(r/T)."""
    s = task_rank(layer.rank, layer.num_tasks)
    return [layer.top_triplets(layer.cache.task_tops, t, lambda tau=tau: tau, s) for t, tau in enumerate(layer.taus)]


def _stacked(layer: Layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """polar(U) (m, Ts), σ (Ts,), polar(V)ᵀ (Ts, n) over the stacked top-s triplets of every task."""
    tops = _tops(layer)
    u = torch.cat([t[0] for t in tops], dim=1)  # (m, Ts)
    sigma = torch.cat([t[1] for t in tops])  # (Ts,)
    vh = torch.cat([t[2] for t in tops], dim=0)  # (Ts, n)
    if sigma.numel() == 0:
        return u, sigma, vh
    return polar(u), sigma, polar(vh)


@matrix_only
def tsv_m(layer: Layer, _params: Params) -> torch.Tensor:
    """Δ = polar(U) diag(σ) polar(V)ᵀ."""
    pu, sigma, pvh = _stacked(layer)
    if sigma.numel() == 0:
        return torch.zeros_like(layer.taus[0])
    return (pu * sigma) @ pvh  # (m, Ts) @ (Ts, n)


def tsv_spectrum(layer: Layer, _params: Params) -> torch.Tensor:
    """σ(Δ) (Ts,), descending: the stacked σ, since both polar factors are orthonormal."""
    return torch.cat([t[1] for t in _tops(layer)]).sort(descending=True).values


def tsv_factors(layer: Layer, _params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ's left singular vectors and values: polar(U) and polar(V) have orthonormal columns, so
    polar(U) diag(σ) polar(V)ᵀ is an SVD once σ is sorted (descending; ties keep task order)."""
    pu, sigma, _ = _stacked(layer)
    order = torch.sort(sigma, descending=True, stable=True).indices
    return pu[:, order], sigma[order]  # (m, Ts), (Ts,)


METHOD = register(Method(
    name="tsv_m",
    display_name="TSV-Merge",
    paper_url="https://arxiv.org/abs/2412.00081",
    summary="Keeps each task's top singular vectors (r/T each) and orthogonalizes them jointly "
            "to remove interference.",
    fn=tsv_m,
    factors=tsv_factors,
    spectrum=tsv_spectrum,
    color="#2F9E44",
    spectral=True,
))
