"""Plain float64 reference implementations of every method, straight from docs/design.md, Methods.

Full SVDs everywhere, no caching, no tricks: the engine must equal these. Other rooms' tests
may import them. Inputs are state dicts of tensors; outputs are (base, Δ, α-fixed) like
``merging.merge.MergeUpdate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

Tensor = torch.Tensor
State = dict[str, Tensor]


def is_matrix(key: str, t: Tensor) -> bool:
    return t.dim() == 2 and not key.endswith("text_projection")


def task_vectors(pre: Mapping[str, Tensor], fts: Sequence[Mapping[str, Tensor]]) -> list[State]:
    return [{k: ft[k].double() - pre[k].double() for k in pre} for ft in fts]


def mean_tv(tvs: list[State], key: str) -> Tensor:
    return sum(tv[key] for tv in tvs) / len(tvs)


def polar(a: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def task_arithmetic(tvs: list[State], pre: Mapping[str, Tensor]) -> State:
    return {k: sum(tv[k] for tv in tvs) for k in pre}


def weight_averaging(tvs: list[State], pre: Mapping[str, Tensor]) -> State:
    return task_arithmetic(tvs, pre)  # with α = 1/T


def ties(tvs: list[State], pre: Mapping[str, Tensor], top_k: float = 20.0) -> State:
    keys = list(pre)
    flat = torch.stack([torch.cat([tv[k].reshape(-1) for k in keys]) for tv in tvs])  # (T, N)
    n = flat.shape[1]
    keep = int(round(n * top_k / 100.0))
    kept = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        if keep > 0:
            cut = flat[t].abs().sort().values[n - keep]
            kept[t] = torch.where(flat[t].abs() >= cut, flat[t], 0.0)
    elected = torch.sign(kept.sum(0))
    out = torch.zeros(n, dtype=flat.dtype)
    for j in range(n):
        vals = [float(kept[t, j]) for t in range(flat.shape[0])
                if kept[t, j] != 0 and math.copysign(1, kept[t, j]) == float(elected[j])]
        out[j] = sum(vals) / len(vals) if vals else 0.0
    res, start = {}, 0
    for k in keys:
        size = pre[k].numel()
        res[k] = out[start:start + size].view(pre[k].shape)
        start += size
    return res


def tsv_m_matrix(taus: Sequence[Tensor]) -> Tensor:
    """TSV-M on one task matrix, in the dtype of ``taus``."""
    s = min(taus[0].shape) // len(taus)
    us, ss, vs = [], [], []
    for tau in taus:
        u, sig, vh = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :s])
        ss.append(sig[:s])
        vs.append(vh[:s].T)
    u, sig, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return polar(u) @ torch.diag(sig) @ polar(v).T


def iso_c_matrix(taus: Sequence[Tensor]) -> Tensor:
    """Iso-C on one task matrix, in the dtype of ``taus``."""
    u, sig, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    return sig.mean() * u @ vh


def common_rank(r: int, num_tasks: int, f: float) -> tuple[int, int]:
    k0 = math.floor(r * f + 1e-9)
    k = r - round((r - k0) / num_tasks) * num_tasks
    if k < 0:  # the cap on s (docs/design.md, Conventions): T·s ≤ r
        k += num_tasks * math.ceil(-k / num_tasks)
    return k, (r - k) // num_tasks


def iso_cts_matrix(taus: Sequence[Tensor], common_fraction: float = 0.8) -> Tensor:
    """Iso-CTS on one task matrix, in the dtype of ``taus``."""
    k, s = common_rank(min(taus[0].shape), len(taus), common_fraction)
    u, sig, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    us, ss, vs = [u[:, :k]], [sig[:k]], [vh[:k].T]
    for tau in taus:
        resid = tau - u[:, :k] @ (u[:, :k].T @ tau)
        ru, rs, rvh = torch.linalg.svd(resid, full_matrices=False)
        us.append(ru[:, :s])
        ss.append(rs[:s])
        vs.append(rvh[:s].T)
    ustar, sstar, vstar = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return sstar.mean() * polar(ustar) @ polar(vstar).T


def matrix_only(matrix_fn, tvs: list[State], pre: Mapping[str, Tensor], **params: float) -> State:
    """Apply a per-matrix method to every matrix key; other keys take the mean of the τt."""
    return {k: matrix_fn([tv[k] for tv in tvs], **params) if is_matrix(k, pre[k]) else mean_tv(tvs, k)
            for k in pre}


def tsv_m(tvs: list[State], pre: Mapping[str, Tensor]) -> State:
    return matrix_only(tsv_m_matrix, tvs, pre)


def iso_c(tvs: list[State], pre: Mapping[str, Tensor]) -> State:
    return matrix_only(iso_c_matrix, tvs, pre)


def iso_cts(tvs: list[State], pre: Mapping[str, Tensor], common_fraction: float = 0.8) -> State:
    return matrix_only(iso_cts_matrix, tvs, pre, common_fraction=common_fraction)


def cart(tvs: list[State], pre: Mapping[str, Tensor], rank_ratio: float = 0.12) -> tuple[State, State]:
    """(θavg, Σt c̃t)."""
    avg = {k: pre[k].double() + mean_tv(tvs, k) for k in pre}
    delta = {}
    for k in pre:
        target = is_matrix(k, pre[k]) and ("attn" in k or "mlp" in k) and not ("ln" in k or "bias" in k)
        cs = [tv[k] - mean_tv(tvs, k) for tv in tvs]
        if not target:
            delta[k] = sum(cs)
            continue
        rank = max(1, math.floor(min(pre[k].shape) * rank_ratio + 1e-9))
        total = torch.zeros_like(cs[0])
        for c in cs:
            u, sig, vh = torch.linalg.svd(c, full_matrices=False)
            total += u[:, :rank] @ torch.diag(sig[:rank]) @ vh[:rank]
        delta[k] = total
    return avg, delta


SIMPLE = {"task_arithmetic": task_arithmetic, "weight_averaging": weight_averaging, "ties": ties,
          "tsv_m": tsv_m, "iso_c": iso_c, "iso_cts": iso_cts}


def reference_update(method: str, pre: Mapping[str, Tensor], fts: Sequence[Mapping[str, Tensor]],
                     **params: float) -> tuple[State, State, float | None]:
    """(base, Δ, fixed α) of ``method`` in float64."""
    tvs = task_vectors(pre, fts)
    if method == "cart":
        base, delta = cart(tvs, pre, **params)
        return base, delta, None
    base = {k: v.double() for k, v in pre.items()}
    fixed = 1.0 / len(fts) if method == "weight_averaging" else None
    return base, SIMPLE[method](tvs, pre, **params), fixed
