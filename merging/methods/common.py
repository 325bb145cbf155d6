"""What every method module shares: the per-layer view a method computes Δ from.

A method's ``fn(layer, params) -> Δ`` returns the update for one parameter (same shape as
θ0[key], float32). ``layer.cache`` persists across calls of one ``Merger`` (and lives for one
key only in a streaming merge), so decompositions that do not depend on a parameter are
computed once. A method needing a global pass (TIES's thresholds) declares ``Method.prepare``,
whose result arrives here as ``layer.shared``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from merging.linalg import SVD, fast_svd, top_svd

Params = Mapping[str, float]
LayerFn = Callable[["Layer", Params], torch.Tensor]


@dataclass
class Layer:
    """The T task vectors of one parameter, plus a cache that outlives one merge."""

    key: str
    taus: Sequence[torch.Tensor]  # T × shape of θ0[key], float32
    matrix: bool  # merged as a matrix by spectral methods (merging.tensors.is_matrix)
    cache: dict[str, Any] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.taus)

    @property
    def rank(self) -> int:
        return min(self.taus[0].shape)

    def memo(self, name: str, compute: Callable[[], Any]) -> Any:
        """``cache[name]``, computed by ``compute()`` the first time."""
        if name not in self.cache:
            self.cache[name] = compute()
        return self.cache[name]

    def top_triplets(self, name: str, matrix: Callable[[], torch.Tensor], rank: int) -> SVD:
        """The top-``rank`` singular triplets of ``matrix()``, cached under ``name``; a later
        call with a smaller rank slices the cached ones, a larger rank recomputes."""
        have = self.cache.get(name)
        if have is None or (have[0] < rank and have[1][1].numel() == have[0]):
            have = (rank, top_svd(matrix(), rank))
            self.cache[name] = have
        u, s, vh = have[1]
        return u[:, :rank], s[:rank], vh[:rank]

    def total(self) -> torch.Tensor:
        """Σt τt (cached)."""
        return self.memo("sum", self._sum)

    def _sum(self) -> torch.Tensor:
        total = self.taus[0].clone()
        for tau in self.taus[1:]:
            total += tau
        return total

    def sum_svd(self) -> SVD:
        """Thin SVD of Σt τt, U (m, r), S (r,), Vh (r, n) (cached): shared by Iso-C, Iso-CTS and
        the analysis of the Task Arithmetic sum."""
        return self.memo("sum_svd", lambda: fast_svd(self.total()))

    def sum_rows(self, k: int) -> torch.Tensor:
        """Fk = U[:, :k]ᵀ Δt for every task, (T, k, n), U the left singular vectors of Σt Δt
        (``sum_svd``); rows are computed once and kept as k grows. Iso-CTS's common block reads
        them, and so do the views' projections on the sum's vectors."""
        have = self.cache.get("top")
        if have is None:
            have = self.taus[0].new_empty(self.num_tasks, 0, self.taus[0].shape[1])
        if k > have.shape[1]:
            uk = self.sum_svd()[0][:, have.shape[1]:k]  # (m, k−done)
            new = have.new_empty(self.num_tasks, uk.shape[1], have.shape[2])  # (T, k−done, n)
            for t, tau in enumerate(self.taus):
                torch.mm(uk.T, tau, out=new[t])
            have = self.cache["top"] = new if have.shape[1] == 0 else torch.cat([have, new], 1)
        return have[:, :k]

    def mean(self) -> torch.Tensor:
        """mean of the τt (cached through ``total``)."""
        return self.total() / self.num_tasks

    @classmethod
    def of_sum(cls, key: str, total: torch.Tensor, num_tasks: int, matrix: bool,
               shared: Mapping[str, Any] | None = None) -> Layer:
        """A layer that holds Σt τt alone, for methods whose Δ reads nothing else
        (``Method.sum_only``): its T ``taus`` are data-less meta tensors of the right shape, so
        ``rank`` and ``num_tasks`` work and anything computed from a τt fails loudly."""
        ghost = torch.empty(total.shape, dtype=total.dtype, device="meta")
        return cls(key=key, taus=[ghost] * num_tasks, matrix=matrix, cache={"sum": total}, shared=shared or {})


def matrix_only(fn: LayerFn) -> LayerFn:
    """Wrap a method defined on task matrices: every non-matrix parameter takes the mean of the
    τt (docs/design.md, Methods)."""

    def layer_fn(layer: Layer, params: Params) -> torch.Tensor:
        return fn(layer, params) if layer.matrix else layer.mean()

    layer_fn.__name__ = fn.__name__
    layer_fn.__doc__ = fn.__doc__
    return layer_fn
