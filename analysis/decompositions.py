"""Cached spectral decompositions behind the spectra and SAR views (docs/design.md, Analysis definitions).

One ``Decompositions`` wraps one ``Merger`` and computes, once each:
- the singular values of every task matrix Δt and of the Task Arithmetic sum Σt Δt
  (before any flattening), per matrix key;
- the left singular vectors and singular values of a method's merged update ΔM (after
  flattening), per matrix key, keyed by the method and its resolved parameters.
Moving the Iso-CTS fraction boundary, ε of the SAR, or α therefore recomputes no SVD.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from analysis.labels import layer_labels
from analysis.store import canonical_params
from merging.linalg import singular_values, svd
from merging.progress import Progress, scaled
from merging.registry import get_method

if TYPE_CHECKING:
    from merging.merge import Merger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedSVD:
    """Left singular vectors and singular values of one merged matrix ΔM (m × n, r = min(m, n))."""

    u: torch.Tensor  # (m, r)
    s: torch.Tensor  # (r,), descending


def resolve(method: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The method name and its parameters with defaults filled in (raises MethodError)."""
    return method, get_method(method).resolve(params)


class Decompositions:
    """Lazily computed, cached decompositions of one merger's task matrices and merged updates."""

    def __init__(self, merger: Merger, tasks: Sequence[str] | None = None) -> None:
        self.merger = merger
        self.tasks = list(tasks) if tasks is not None else [f"task {i + 1}" for i in range(merger.num_tasks)]
        if len(self.tasks) != merger.num_tasks:
            raise ValueError(f"{len(self.tasks)} task names for {merger.num_tasks} task vectors")
        self.keys: list[str] = list(merger.matrix_keys)
        self.labels: dict[str, str] = layer_labels(self.keys)
        self._task_sv: dict[str, list[torch.Tensor]] | None = None
        self._sum_sv: dict[str, torch.Tensor] | None = None
        self._merged: dict[tuple[str, str], dict[str, MergedSVD]] = {}

    def shape(self, key: str) -> tuple[int, int]:
        m, n = self.merger.task_vectors()[0][key].shape
        return int(m), int(n)

    def rank(self, key: str) -> int:
        return min(self.shape(key))

    def task_matrices(self, key: str) -> list[torch.Tensor]:
        return [tv[key] for tv in self.merger.task_vectors()]  # T × (m, n)

    def task_singular_values(self) -> dict[str, list[torch.Tensor]]:
        """{key: [σ(Δt) for each task]}, each (r,) descending, on the CPU."""
        if self._task_sv is None:
            self._task_sv = {k: [singular_values(d).cpu() for d in self.task_matrices(k)] for k in self.keys}
        return self._task_sv

    def sum_singular_values(self) -> dict[str, torch.Tensor]:
        """{key: σ(Σt Δt)} (the Task Arithmetic sum before flattening), each (r,)."""
        if self._sum_sv is None:
            self._sum_sv = {k: singular_values(torch.stack(self.task_matrices(k)).sum(0)).cpu() for k in self.keys}
        return self._sum_sv

    def merged(self, method: str, params: Mapping[str, Any] | None = None,
               progress: Progress | None = None) -> dict[str, MergedSVD]:
        """{key: MergedSVD of ΔM} for ``method`` with ``params`` (cached per resolved params)."""
        name, resolved = resolve(method, params)
        cache_key = (name, canonical_params(resolved))
        if cache_key not in self._merged:
            delta = self.merger.update(name, resolved, progress=scaled(progress, 0.0, 0.5)).delta
            step = scaled(progress, 0.5, 1.0)
            out = {}
            for i, key in enumerate(self.keys):
                u, s, _ = svd(delta[key].to(torch.float32))  # (m, r), (r,)
                out[key] = MergedSVD(u=u, s=s.cpu())
                step((i + 1) / len(self.keys), f"SVD of merged {self.labels[key]}")
            self._merged[cache_key] = out
            log.debug("decomposed merged update of %s %s", name, cache_key[1])
        return self._merged[cache_key]
