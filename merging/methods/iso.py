"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with
Common and Task-Specific Subspaces", ICML 2025, arXiv:2502.04959): Iso-C flattens the
spectrum of the Task Arithmetic sum (Δ = σ̄ U Vᵀ, Sec. 3); Iso-CTS keeps the top-k common
directions of the sum and adds each task's top-s directions outside them, then flattens the
spectrum of the stack (Sec. 4, Algorithm 1).  DESIGN §3.

Iso-C and Iso-CTS are ONE function with ``common_fraction`` (Iso-C is common_fraction = 1),
registered twice. Per matrix, with S = Σt Δt = U Σ Vᵀ (cached across calls):
- Iso-C: Δ = σ̄ polar(S), σ̄ = mean of all r singular values;
- Iso-CTS: the residual Rt = (I − Uk Ukᵀ) Δt. For wide/square S, U spans every column, so
  Rt = U[:, k:] (U[:, k:]ᵀ Δt) and its top-s triplets come from the small (r−k)×n block
  U[:, k:]ᵀ Δt (rows cached incrementally as k moves). For tall S, RtᵀRt =
  Nt + Ft[k:]ᵀ Ft[k:] with Ft = Uᵀ Δt and Nt = ΔtᵀΔt − FtᵀFt cached, so a new k costs one
  n×n eigh per task. polar(U*) and polar(V*) use ``polar_extended`` (the common block is
  orthonormal), so no r×r SVD is needed.
"""

from __future__ import annotations

import math

import torch

from merging.linalg import SVD, polar_extended, polar_with_values, svd, top_svd
from merging.methods.common import Layer, Params, spectral
from merging.registry import Method, Param, register


def common_rank(r: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(k, s) of DESIGN §3 step 1: k0 = floor(r·f); k = r − round((r − k0)/T)·T
    (round half to even); s = (r − k)/T, capped so that T·s ≤ r."""
    k0 = math.floor(r * common_fraction + 1e-9)
    s = min(round((r - k0) / num_tasks), r // num_tasks)
    return r - s * num_tasks, s


def _sum_svd(layer: Layer) -> SVD:
    return layer.memo("sum_svd", lambda: svd(layer.total()))  # (m, r), (r,), (r, n)


def iso_c_delta(layer: Layer) -> torch.Tensor:
    """Δ = σ̄ polar(S)."""
    if "sum_svd" in layer.cache:
        u, s, vh = layer.cache["sum_svd"]
        return s.mean() * (u @ vh)
    q, s = layer.memo("sum_polar", lambda: polar_with_values(layer.total()))  # (m, n), (r,)
    return s.mean() * q


def _tail_rows(layer: Layer, t: int, k: int) -> torch.Tensor:
    """U[:, k:]ᵀ Δt, (r−k, n); rows are computed once and kept as k moves down."""
    u = _sum_svd(layer)[0]  # (m, r)
    name = f"tail:{t}"
    have = layer.cache.get(name)
    start = u.shape[1] if have is None else u.shape[1] - have.shape[0]
    if k < start:
        new = u[:, k:start].T @ layer.taus[t]  # (start−k, n)
        have = new if have is None else torch.cat([new, have], 0)
        layer.cache[name] = have
    return have[have.shape[0] - (u.shape[1] - k):]


def _residual_top_wide(layer: Layer, t: int, k: int, s: int) -> SVD:
    """Top-s triplets of Rt when m ≤ n: from the (r−k)×n block."""
    u = _sum_svd(layer)[0]
    ub, sb, vbh = top_svd(_tail_rows(layer, t, k), s)  # (r−k, s), (s,), (s, n)
    return u[:, k:] @ ub, sb, vbh


def _tall_grams(layer: Layer, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ft = UᵀΔt (n, n), Nt = ΔtᵀΔt − FtᵀFt (n, n)) for tall S, cached."""
    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        tau = layer.taus[t]  # (m, n)
        f = _sum_svd(layer)[0].T @ tau  # (n, n)
        return f, tau.T @ tau - f.T @ f
    return layer.memo(f"tall:{t}", compute)


def _residual_top_tall(layer: Layer, t: int, k: int, s: int) -> SVD:
    """Top-s triplets of Rt when m > n, from the n×n Gram Nt + Ft[k:]ᵀFt[k:]."""
    f, n_t = _tall_grams(layer, t)
    gram = n_t + f[k:].T @ f[k:]  # (n, n)
    lam, w = torch.linalg.eigh(gram)
    lam, w = lam.flip(0)[:s].clamp_min(0), w.flip(1)[:, :s]  # (s,), (n, s)
    if s and lam[-1] <= 1e-12 * max(float(lam[0]), 1e-300):
        return _residual_top_plain(layer, t, k, s)
    sig = lam.sqrt().to(f.dtype)  # (s,)
    w = w.to(f.dtype)
    uk = _sum_svd(layer)[0][:, :k]  # (m, k)
    left = (layer.taus[t] @ w - uk @ (f[:k] @ w)) / sig  # Rt v / σ  (m, s)
    return left, sig, w.T


def _residual_top_plain(layer: Layer, t: int, k: int, s: int) -> SVD:
    """Top-s triplets of Rt = Δt − Uk Ukᵀ Δt by a full robust SVD (rank-deficient cases)."""
    uk = _sum_svd(layer)[0][:, :k]
    tau = layer.taus[t]
    u, sig, vh = svd(tau - uk @ (uk.T @ tau))
    return u[:, :s], sig[:s], vh[:s]


def iso_cts_delta(layer: Layer, k: int, s: int) -> torch.Tensor:
    """Δ = σ̄ polar(U*) polar(V*)ᵀ over the common block and the T task blocks."""
    u, sig, vh = _sum_svd(layer)
    m, n = layer.taus[0].shape
    residual = _residual_top_tall if m > n else _residual_top_wide
    tops = [residual(layer, t, k, s) for t in range(layer.num_tasks)]
    x_u = torch.cat([tp[0] for tp in tops], 1)  # (m, Ts)
    x_v = torch.cat([tp[2] for tp in tops], 0).T  # (n, Ts)
    sigma = torch.cat([sig[:k]] + [tp[1] for tp in tops])  # (r,)
    pu = polar_extended(u[:, :k], x_u)  # (m, r)
    pv = polar_extended(vh[:k].T, x_v)  # (n, r)
    return sigma.mean() * (pu @ pv.T)


@spectral
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
    spectral=True,
))

ISO_CTS = register(Method(
    name="iso_cts",
    display_name="Iso-CTS",
    paper_url=PAPER,
    summary="Keeps a common subspace of the sum plus each task's own top directions, then "
            "flattens the spectrum.",
    fn=iso,
    params=(Param("common_fraction", 0.8, 0.0, 1.0, 0.05,
                  "Share of the rank given to the common subspace; the rest is split evenly "
                  "between tasks (1.0 = Iso-C).", label="common fraction"),),
    spectral=True,
))
