"""A deterministic basis for tied singular values (Iso-C and Iso-CTS flatten the whole spectrum).

When ΔM has equal singular values its top-k directions are not unique, and an SVD routine may
return any basis of a tied block. ``order_ties`` fixes one, documented: inside each tied block,
directions are ordered by how much of a *reference* matrix they carry (the Task Arithmetic sum),
which is what the authors' figure script does for Iso (it keeps the sum's own top-k vectors).
"""

from __future__ import annotations

import numpy as np
import torch


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
        out[:, a:b] = out[:, a:b] @ block_order(out[:, a:b], ref)[1]
    return out


def block_order(block: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ descending (b,), W (b, b)): the rotation that orders the columns of ``block`` (m, b) by
    how much of ``reference`` (m, n) they hold, block @ W, and those amounts ‖(block W)ᵀ ref‖² per
    column; in ``block``'s dtype (float64 for ``order_ties``)."""
    x = block.T @ reference.to(block.dtype)  # (b, n): the reference seen from the block
    lam, w = torch.linalg.eigh(x @ x.T)  # (b,), (b, b), ascending: the Gram route, cheaper than an SVD of x
    return lam.flip(0), w.flip(-1).contiguous()


def ordered_basis(merged: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, σ) of ``merged`` (m, n), every tied block ordered by ``reference`` (module doc)."""
    u, s, _ = torch.linalg.svd(merged.double(), full_matrices=False)  # (m, r), (r,)
    return order_ties(u, s, reference, rtol), s
