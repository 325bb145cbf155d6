"""CART, centered low-rank merging (Choi et al., "Revisiting Weight Averaging for Model
Merging", arXiv:2412.12153, Sec. 3, Eq. 4–5).  docs/design.md, Methods.

θavg = θ0 + mean(τt); centered vectors ct = θt − θavg = τt − mean(τ). For matrices of the
attention and MLP blocks (keys containing ``attn`` or ``mlp`` but not ``ln`` or ``bias``),
ct is replaced by its rank-max(1, floor(ρ·r)) truncated SVD c̃t; every other parameter keeps
ct, whose sum is 0, so it ends at θavg. θ = θavg + λ Σt c̃t: the base is θavg and λ is α.
"""

from __future__ import annotations

import math

import torch

from merging.methods.common import Layer, Params
from merging.registry import Method, Param, register


def is_cart_target(key: str, matrix: bool) -> bool:
    """Whether CART low-rank-truncates this parameter."""
    return matrix and ("attn" in key or "mlp" in key) and not ("ln" in key or "bias" in key)


def cart_rank(r: int, rank_ratio: float) -> int:
    """max(1, floor(ρ·r))."""
    return max(1, math.floor(r * rank_ratio + 1e-9))


def cart(layer: Layer, params: Params) -> torch.Tensor:
    """Δ = Σt c̃t on the targeted matrices, exactly 0 elsewhere (the base is θavg)."""
    if not is_cart_target(layer.key, layer.matrix):
        return torch.zeros_like(layer.taus[0])
    rank = cart_rank(layer.rank, params["rank_ratio"])
    mean = layer.mean()
    delta = torch.zeros_like(mean)
    for t, tau in enumerate(layer.taus):
        u, s, vh = layer.top_triplets(layer.cache.centered_tops, t, lambda tau=tau: tau - mean, rank)  # (m,k),(k,),(k,n)
        delta += (u * s) @ vh
    return delta


METHOD = register(Method(
    name="cart",
    display_name="CART",
    paper_url="https://arxiv.org/abs/2412.12153",
    summary="Merges around the weight average: adds back a low-rank part of each task's "
            "deviation from it (α plays CART's λ).",
    fn=cart,
    color="#F76707",
    params=(Param("rank_ratio", 0.12, 0.01, 1.0, 0.01,
                  "Rank kept of each centered task matrix, as a fraction of min(m, n) "
                  "(published: 0.12 for 8 tasks, 0.16 for 14, 0.32 for 20).", label="rank ratio ρ",
                  sweep=(0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.4, 0.5)),),
    spectral=True,
    base="average",
))
