"""What every method module shares: the per-layer view a method computes Δ from, and the named
intermediates of one key that outlive a merge.

A method's ``fn(layer, params) -> Δ`` returns the update for one parameter (same shape as
θ0[key], float32). ``layer.cache`` (a ``LayerCache``) persists across calls of one ``Merger``
(and lives for one key only in a streaming merge), so decompositions that do not depend on a
parameter are computed once. A method needing a global pass (TIES's thresholds) declares
``Method.prepare``, whose result arrives here as ``layer.shared``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from merging.linalg import SVD, fast_svd, gram, top_svd

Params = Mapping[str, float]
LayerFn = Callable[["Layer", Params], torch.Tensor]
# (the rank asked for, the top triplets of a matrix at that rank: U (m, k), σ (k,), Vh (k, n))
RankedSVD = tuple[int, SVD]


@dataclass
class LayerCache:
    """The intermediates of one key, owned by the engine and shared by every method and view that
    works on the key (always under the key's lock, ``Merger.layer``).

    Most fields are written once. These move with a parameter and are **changed in place**, so a
    reader must hold the key's lock for as long as it uses them:
    - ``sum_rows`` grows along k (rows are appended, never rewritten);
    - ``tail_rows`` / ``tail_grams`` grow as Iso-CTS's k moves down (wide layers);
    - ``residual_grams`` is moved from its k to the new one by adding or subtracting rows' Grams
      (tall layers), and ``residual_vectors`` is replaced by the latest eigenvectors.
    """

    total: torch.Tensor | None = None  # Σt τt (shape of θ0[key])
    sum_svd: SVD | None = None  # thin SVD of Σt τt: U (m, r), σ (r,), Vh (r, n)
    sum_rows: torch.Tensor | None = None  # (T, k, n) U[:, :k]ᵀ Δt, k as far as asked (in place)
    left_grams: torch.Tensor | None = None  # (T, m, m) Δt Δtᵀ of a wide layer (the views' projections)
    task_tops: dict[int, RankedSVD] = field(default_factory=dict)  # TSV-M: top-s of every Δt
    centered_tops: dict[int, RankedSVD] = field(default_factory=dict)  # CART: top-k of every ct
    tail_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # Iso-CTS wide: Bt (r−k, n) (in place)
    tail_grams: dict[int, torch.Tensor] = field(default_factory=dict)  # Iso-CTS wide: Bt Btᵀ (in place)
    residual_grams: tuple[int, torch.Tensor] | None = None  # Iso-CTS tall: (k, RtᵀRt (T, n, n)) (in place)
    residual_vectors: torch.Tensor | None = None  # Iso-CTS tall: last eigenvectors (T, n, s), a warm start

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor held, for byte accounting and alias checks."""
        yield from _tensors([getattr(self, f.name) for f in fields(self)])

    def nbytes(self) -> int:
        return tensor_bytes(list(self.tensors()))


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or nested tuples, lists and dicts of them)."""
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


@dataclass
class Layer:
    """The T task vectors of one parameter, plus the intermediates that outlive one merge."""

    key: str
    taus: Sequence[torch.Tensor]  # T × shape of θ0[key], float32
    matrix: bool  # merged as a matrix by spectral methods (merging.tensors.is_matrix)
    cache: LayerCache = field(default_factory=LayerCache)
    shared: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.taus)

    @property
    def rank(self) -> int:
        return min(self.taus[0].shape)

    def top_triplets(self, cached: dict[int, RankedSVD], index: int, matrix: Callable[[], torch.Tensor],
                     rank: int) -> SVD:
        """The top-``rank`` singular triplets of ``matrix()``, kept in ``cached[index]`` (one of the
        cache's ``*_tops``); a later call with a smaller rank slices the kept ones, a larger rank
        recomputes (unless the matrix has no more)."""
        have = cached.get(index)
        if have is None or (have[0] < rank and have[1][1].numel() == have[0]):
            have = cached[index] = (rank, top_svd(matrix(), rank))
        u, s, vh = have[1]
        return u[:, :rank], s[:rank], vh[:rank]

    def total(self) -> torch.Tensor:
        """Σt τt (cached)."""
        if self.cache.total is None:
            total = self.taus[0].clone()
            for tau in self.taus[1:]:
                total += tau
            self.cache.total = total
        return self.cache.total

    def sum_svd(self) -> SVD:
        """Thin SVD of Σt τt, U (m, r), S (r,), Vh (r, n) (cached): shared by Iso-C, Iso-CTS and
        the analysis of the Task Arithmetic sum."""
        if self.cache.sum_svd is None:
            self.cache.sum_svd = fast_svd(self.total())
        return self.cache.sum_svd

    def sum_rows(self, k: int) -> torch.Tensor:
        """Fk = U[:, :k]ᵀ Δt for every task, (T, k, n), U the left singular vectors of Σt Δt
        (``sum_svd``); rows are computed once and kept as k grows. Iso-CTS's common block reads
        them, and so do the views' projections on the sum's vectors."""
        have = self.cache.sum_rows
        if have is None:
            have = self.taus[0].new_empty(self.num_tasks, 0, self.taus[0].shape[1])
        if k > have.shape[1]:
            uk = self.sum_svd()[0][:, have.shape[1]:k]  # (m, k−done)
            new = have.new_empty(self.num_tasks, uk.shape[1], have.shape[2])  # (T, k−done, n)
            for t, tau in enumerate(self.taus):
                torch.mm(uk.T, tau, out=new[t])
            have = self.cache.sum_rows = new if have.shape[1] == 0 else torch.cat([have, new], 1)
        return have[:, :k]

    def left_grams(self) -> torch.Tensor:
        """Δt Δtᵀ for every task, (T, m, m) (cached): on a wide layer every basis reads its
        projections from them."""
        if self.cache.left_grams is None:
            self.cache.left_grams = torch.stack([gram(tau.T) for tau in self.taus])
        return self.cache.left_grams

    def mean(self) -> torch.Tensor:
        """mean of the τt (cached through ``total``)."""
        return self.total() / self.num_tasks


def matrix_only(fn: LayerFn) -> LayerFn:
    """Wrap a method defined on task matrices: every non-matrix parameter takes the mean of the
    τt (docs/design.md, Methods)."""

    def layer_fn(layer: Layer, params: Params) -> torch.Tensor:
        return fn(layer, params) if layer.matrix else layer.mean()

    layer_fn.__name__ = fn.__name__
    layer_fn.__doc__ = fn.__doc__
    return layer_fn
