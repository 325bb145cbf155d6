"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with
Common and Task-Specific Subspaces", ICML 2025, arXiv:2502.04959): Iso-C flattens the
spectrum of the Task Arithmetic sum (Δ = σ̄ U Vᵀ, Sec. 3); Iso-CTS keeps the top-k common
directions of the sum and adds each task's top-s directions outside them, then flattens the
spectrum of the stack (Sec. 4, Algorithm 1).  docs/design.md, Methods.

Iso-C and Iso-CTS are ONE function with ``common_fraction`` (Iso-C is common_fraction = 1),
registered twice. Per matrix, with S = Σt Δt = U Σ Vᵀ (cached across calls):
- Iso-C: Δ = σ̄ polar(S), σ̄ = mean of all r singular values;
- Iso-CTS: the residual Rt = (I − Uk Ukᵀ) Δt and its top-s triplets, never formed:
  - wide/square S (m ≤ n): U is square, so Rt = U[:, k:] Bt with the small (r−k)×n block
    Bt = U[:, k:]ᵀ Δt (rows cached as k moves); and since U* = U · blockdiag(I, [B1 … BT]'s
    left factors), polar(U*) = [Uk | U[:, k:] polar(Y)] for the (r−k)×(r−k) coefficient block Y;
  - tall S (m > n): RtᵀRt = Gt − FkᵀFk with Gt = ΔtᵀΔt and Fk = Ukᵀ Δt, both cached (the
    residual Gram is updated by the rows between the old and the new k), and its top-s
    eigenvectors come from a block Krylov solver warm-started from the previous k; the task
    left vectors X are residual directions, X ⟂ Uk, so polar(U*) = [Uk | polar(X)].
  polar(V*) uses ``polar_extended``: the common block is orthonormal, so no r×r SVD is needed.
"""

from __future__ import annotations

import math

import torch

from merging.linalg import (FLOAT32_GRAM_MIN_RATIO, STACK_MAX_COND, SVD, conditioned_polar, gram,
                            gram_resolves, mean_scaled_polar, polar, polar_extended, top_eigh, top_svd)
from merging.methods.common import Layer, Params, matrix_only
from merging.registry import Method, Param, register


def common_rank(r: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(k, s) of docs/design.md, Methods, Iso-CTS step 1: k0 = floor(r·f); k = r − round((r − k0)/T)·T
    (round half to even); s = (r − k)/T, capped so that T·s ≤ r."""
    k0 = math.floor(r * common_fraction + 1e-9)
    s = min(round((r - k0) / num_tasks), r // num_tasks)
    return r - s * num_tasks, s


def iso_c_delta(layer: Layer) -> torch.Tensor:
    """Δ = σ̄ polar(S)."""
    if layer.cache.sum_svd is not None:
        u, s, vh = layer.cache.sum_svd
        return torch.mm(u, vh).mul_(s.mean())
    return mean_scaled_polar(layer.total())  # (m, n)


# -- wide or square S: U is square --------------------------------------------------------------

def _tail_rows(layer: Layer, t: int, k: int) -> torch.Tensor:
    """Bt = U[:, k:]ᵀ Δt, (r−k, n); rows are computed once and kept as k moves down."""
    u = layer.sum_svd()[0]  # (m, r)
    have = layer.cache.tail_rows.get(t)
    start = u.shape[1] if have is None else u.shape[1] - have.shape[0]
    if k < start:
        new = u[:, k:start].T @ layer.taus[t]  # (start−k, n)
        have = layer.cache.tail_rows[t] = new if have is None else torch.cat([new, have], 0)
    return have[have.shape[0] - (u.shape[1] - k):]


def _tail_gram(layer: Layer, t: int, k: int) -> torch.Tensor:
    """Bt Btᵀ, (r−k, r−k): the trailing block of Uᵀ Δt Δtᵀ U, so a larger k slices it; as k
    moves down only the new rows' products are computed."""
    rows = _tail_rows(layer, t, k)  # (r−k, n)
    have = layer.cache.tail_grams.get(t)
    done = 0 if have is None else have.shape[0]
    if rows.shape[0] > done:
        fresh = rows.shape[0] - done
        top = rows[:fresh] @ rows.T  # (fresh, r−k): the new rows against all of them
        grown = rows.new_empty(rows.shape[0], rows.shape[0])
        grown[:fresh] = top
        grown[fresh:, :fresh] = top[:, fresh:].T
        if have is not None:
            grown[fresh:, fresh:] = have
        have = layer.cache.tail_grams[t] = grown
    skip = have.shape[0] - rows.shape[0]
    return have[skip:, skip:]


def _wide_tasks(layer: Layer, k: int, s: int) -> list[SVD]:
    """Top-s triplets of every Bt (left vectors as coefficients in U[:, k:]) from the eigh of
    its cached Gram Bt Btᵀ: Bt = W Σ Vtᵀ with Vtᵀ = Σ⁻¹ Wᵀ Bt."""
    grams = torch.stack([_tail_gram(layer, t, k) for t in range(layer.num_tasks)])  # (T, r−k, r−k)
    lam, w = top_eigh(grams, s)  # (T, s), (T, r−k, s)
    tops = []
    for t in range(layer.num_tasks):
        rows = _tail_rows(layer, t, k)  # (r−k, n)
        if not gram_resolves(lam[t], FLOAT32_GRAM_MIN_RATIO):  # float32 blurs the boundary
            tops.append(top_svd(rows, s))  # float64 Gram, or the SVD
            continue
        sig = lam[t].sqrt()  # (s,)
        tops.append((w[t], sig, (w[t].T @ rows).div_(sig[:, None])))  # (r−k, s), (s,), (s, n)
    return tops


def _wide_blocks(layer: Layer, k: int, s: int) -> tuple[torch.Tensor, list[SVD]]:
    """(polar(U*) (m, r), the task triplets) when U is square: Rt = U[:, k:] Bt, so the task
    left vectors are U[:, k:] Y with Y (r−k, Ts) their coefficients, and
    polar(U*) = U · blockdiag(I, polar(Y)) exactly. Y is square (Ts = r − k) and often far from
    orthogonal (κ ~ 1e3–1e4): Newton in float32 up to κ = STACK_MAX_COND, else float64."""
    u = layer.sum_svd()[0]
    tops = _wide_tasks(layer, k, s)
    coeff = torch.cat([ub for ub, _, _ in tops], 1)  # (r−k, Ts)
    y = conditioned_polar(coeff, STACK_MAX_COND)
    y = polar(coeff.double()).to(u.dtype) if y is None else y  # (r−k, Ts)
    pu = torch.cat([u[:, :k], u[:, k:] @ y], 1)  # (m, r)
    return pu, [(u[:, k:] @ ub, sb, vbh) for ub, sb, vbh in tops]


# -- tall S -------------------------------------------------------------------------------------

def _residual_grams(layer: Layer, k: int) -> torch.Tensor:
    """RtᵀRt = ΔtᵀΔt − FkᵀFk for every task, (T, n, n), moved from the cached k by the rows in
    between (in place: the cache owns it)."""
    if layer.cache.residual_grams is None:
        n = layer.taus[0].shape[1]
        grams = layer.taus[0].new_empty(layer.num_tasks, n, n)
        for t, tau in enumerate(layer.taus):
            gram(tau, out=grams[t])
        layer.cache.residual_grams = (0, grams)
    k0, grams = layer.cache.residual_grams
    if k != k0:
        rows = layer.sum_rows(max(k, k0))[:, min(k, k0):max(k, k0)]  # (T, |k−k0|, n)
        for t in range(layer.num_tasks):
            grams[t].add_(gram(rows[t]), alpha=-1.0 if k > k0 else 1.0)
        layer.cache.residual_grams = (k, grams)
    return grams


def _tall_tasks(layer: Layer, k: int, s: int) -> list[SVD]:
    """Top-s triplets of every Rt when m > n, from the n×n Grams (one batched eigensolve)."""
    lam, w = top_eigh(_residual_grams(layer, k), s, layer.cache.residual_vectors)  # (T, s), (T, n, s)
    layer.cache.residual_vectors = w
    uk = layer.sum_svd()[0][:, :k]  # (m, k)
    coeff = (layer.sum_rows(k) @ w).transpose(0, 1).reshape(k, layer.num_tasks * s)  # Fk v side by side (k, Ts)
    inside = (uk @ coeff).view(uk.shape[0], layer.num_tasks, s)  # Uk Fk v  (m, T, s)
    tops = []
    for t, tau in enumerate(layer.taus):
        if s and not gram_resolves(lam[t], FLOAT32_GRAM_MIN_RATIO):
            tops.append(_residual_top_plain(layer, t, k, s))
            continue
        sig = lam[t].sqrt()  # (s,)
        left = (tau @ w[t]).sub_(inside[:, t]).div_(sig)  # Rt v / σ  (m, s)
        tops.append((left, sig, w[t].T))
    return tops


def _residual_top_plain(layer: Layer, t: int, k: int, s: int) -> SVD:
    """Top-s triplets of Rt = Δt − Uk Ukᵀ Δt from the residual itself (``top_svd``: a float64
    Gram, or the full robust SVD when rank-deficient)."""
    uk = layer.sum_svd()[0][:, :k]
    tau = layer.taus[t]
    return top_svd(tau - uk @ (uk.T @ tau), s)


# κ(X) up to which _left_polar takes the float32 Gram route for polar(X): orthonormal to
# ~ε32·κ² (measured 3e-6 at κ = 10 on 3072×768), and X's rounding along Uk grows only by κ.
LEFT_MAX_COND = 10.0


def _left_polar(uk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """polar([Uk | X]) for task left vectors X (m, Ts): they are residual directions, X ⟂ Uk, so
    the Gram is blockdiag(I, XᵀX) and polar([Uk | X]) = [Uk | polar(X)], one thin float32
    problem. X's rounding along Uk is amplified by κ(X) in polar(X), so when the tasks'
    directions are nearly dependent (κ(X) > LEFT_MAX_COND, common on real task vectors; the
    Gram eigh tells before any product is formed), or X is too square for the Gram route, the
    stack goes through ``polar_extended`` instead."""
    x = x - uk @ (uk.T @ x)  # (m, Ts)
    if x.shape[1] == 0:
        return uk.clone()
    q = conditioned_polar(x, LEFT_MAX_COND)  # None: ill-conditioned or square-ish X
    return polar_extended(uk, x) if q is None else torch.cat([uk, q], 1)  # (m, r)


def _iso_cts_parts(layer: Layer, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(polar(U*) (m, r), polar(V*) (n, r), σ̄) over the common block and the T task blocks."""
    u, sig, vh = layer.sum_svd()
    m, n = layer.taus[0].shape
    if m > n:
        tasks = _tall_tasks(layer, k, s)
        pu = _left_polar(u[:, :k], torch.cat([tp[0] for tp in tasks], 1))  # (m, r)
    else:
        pu, tasks = _wide_blocks(layer, k, s)
    sigma = torch.cat([sig[:k]] + [tp[1] for tp in tasks])  # (r,)
    pv = polar_extended(vh[:k].T, torch.cat([tp[2] for tp in tasks], 0).T)  # (n, r)
    return pu, pv, float(sigma.mean())


def iso_cts_delta(layer: Layer, k: int, s: int) -> torch.Tensor:
    """Δ = σ̄ polar(U*) polar(V*)ᵀ."""
    pu, pv, mean = _iso_cts_parts(layer, k, s)
    return torch.mm(pu, pv.T).mul_(mean)  # (m, n)


def iso_spectrum(layer: Layer, params: Params) -> torch.Tensor:
    """σ(Δ) = σ̄·1 (r,) without the polar factors: σ̄ is the mean of the sum's top-k singular
    values and every task's top-s ones (the stacked σ*), or of all the sum's for Iso-C."""
    k, s = common_rank(layer.rank, layer.num_tasks, params.get("common_fraction", 1.0))
    _, sig, _ = layer.sum_svd()
    if s == 0:
        return torch.full_like(sig, float(sig.mean()))
    tasks = _tall_tasks(layer, k, s) if layer.taus[0].shape[0] > layer.taus[0].shape[1] else _wide_tasks(layer, k, s)
    sigma = torch.cat([sig[:k]] + [tp[1] for tp in tasks])  # (r,)
    return torch.full_like(sigma, float(sigma.mean()))


def iso_factors(layer: Layer, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ's left singular vectors (m, r) and its flat spectrum σ̄·1 (r,): Δ = σ̄ P Qᵀ with P, Q
    orthonormal is its own SVD. The order (a flat spectrum has no order of its own) is the
    method's: for Iso-C the sum's singular vectors by the sum's singular values; for Iso-CTS the
    common block that way, then each task's directions in task order."""
    k, s = common_rank(layer.rank, layer.num_tasks, params.get("common_fraction", 1.0))
    if s == 0:
        u, sig, _ = layer.sum_svd()
        return u, torch.full_like(sig, float(sig.mean()))
    pu, _, mean = _iso_cts_parts(layer, k, s)
    return pu, torch.full((pu.shape[1],), mean, dtype=pu.dtype, device=pu.device)


@matrix_only
def iso(layer: Layer, params: Params) -> torch.Tensor:
    """Iso-CTS with ``common_fraction`` f (f = 1, the Iso-C default, flattens the whole sum)."""
    k, s = common_rank(layer.rank, layer.num_tasks, params.get("common_fraction", 1.0))
    return iso_c_delta(layer) if s == 0 else iso_cts_delta(layer, k, s)


PAPER = "https://arxiv.org/abs/2502.04959"

ISO_C = register(Method(
    name="iso_c",
    display_name="Iso-C",
    paper_url=PAPER,
    summary="Flattens the spectrum of the summed task matrices: every direction gets the mean "
            "singular value.",
    fn=iso,
    color="#4C6EF5",
    spectral=True,
    factors=iso_factors,
    spectrum=iso_spectrum,
    sum_basis=lambda sigma, num_tasks: torch.full_like(sigma, float(sigma.mean())),  # σ̄ on every direction of S
))

ISO_CTS = register(Method(
    name="iso_cts",
    display_name="Iso-CTS",
    paper_url=PAPER,
    summary="Keeps a common subspace of the sum plus each task's own top directions, then "
            "flattens the spectrum.",
    fn=iso,
    color="#AE3EC9",
    params=(Param("common_fraction", 0.8, 0.0, 1.0, 0.05,
                  "Share of the rank given to the common subspace; the rest is split evenly "
                  "between tasks (1.0 = Iso-C).", label="common fraction",
                  sweep=tuple(round(0.1 * i, 1) for i in range(11))),),
    spectral=True,
    factors=iso_factors,
    spectrum=iso_spectrum,
))
