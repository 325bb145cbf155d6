"""Per-layer spectral results behind the Spectra and Alignment views, computed only for the
layers a view shows (Marczak et al., "No Task Left Behind", ICML 2025, Eq. 5–6 for SAR).

For one matrix key, on demand:
- ``LayerSpectra``: the singular values of every task matrix Δt and of the Task Arithmetic sum
  Σt Δt (before any flattening), and ‖Δt‖F;
- ``MergedLayer``: for a method and its parameters, the singular values of its update from θ0,
  ΔM = θ − θ0 (after flattening), and ``proj[t, i] = ‖u_iᵀ Δt‖²`` for ΔM's left singular
  vectors u_i in descending order. SAR at any ε is then a prefix sum of ``proj`` (no SVD, no
  product per ε).

ΔM is the method's α·Δ at α = 1 (the update as the engine returns it; a method that fixes α, like
weight averaging's 1/T, uses its own), and for CART, which merges around the weight average, the
whole update from θ0: mean(τt) + λ Σt c̃t (λ is α). Task Arithmetic, weight averaging and Iso-C
share the left singular vectors of Σt Δt (``Method.sum_basis``), so their ``proj`` is computed
once per key; a method that declares ``Method.factors`` (Iso-CTS, TSV-M: Δ is built from orthonormal factors) gives its
own SVD, so only the others (TIES, CART) take an SVD of ΔM. On a flat spectrum the basis is
then the method's own, deterministic one: Iso-C's is the sum's singular vectors in the order of
the sum's singular values.

The projections share work between the methods of one layer: on wide layers (m < n) they come
from the tasks' left Grams Δt Δtᵀ, computed once per layer; on the others the rows along the
sum's own vectors are the layer's ``sum_rows``, which Iso-CTS's merge computes for its common
block. Iso-CTS's flat basis [Uk | task directions] is put in the tie order by rotating only its
task directions (``_tie_ordered``), which equals the rotation of the whole block.

Every result is small (a few (T, r) arrays) and immutable. It is kept in memory under a byte
budget and, when a store and fingerprint are given, in the on-disk store (keyed by zoo
fingerprint, key, method and parameters), so a revisit or a restart recomputes nothing. The
heavy per-key work happens inside ``Merger.layer``: under that key's lock, with the key's task
vectors read once and its decompositions shared with the merge engine.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis.basis import block_order, tied_blocks
from analysis.labels import layer_labels
from analysis.similarity import key_gram
from analysis.store import canonical_params
from merging import settings
from merging.linalg import singular_values, svd
from merging.methods.common import Layer
from merging.progress import Progress, silent
from merging.registry import Method, get_method

if TYPE_CHECKING:
    from analysis.store import ResultStore
    from merging.merge import Merger

log = logging.getLogger(__name__)

SUM_BASIS = "sum basis"  # pseudo-method under which the projections on Σt Δt's vectors are kept


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class LayerSpectra:
    """Parameter-free spectra of one matrix key (r = min(m, n))."""

    task: np.ndarray  # (T, r) σ(Δt), descending
    total: np.ndarray  # (r,) σ(Σt Δt), descending
    norms: np.ndarray  # (T,) ‖Δt‖F


@dataclass(frozen=True)
class TaskNorms:
    """‖Δt‖F of every task on one matrix key (all SAR needs besides the merged update)."""

    norms: np.ndarray  # (T,)


@dataclass(frozen=True)
class MergedSpectrum:
    """σ(ΔM) alone (r,), for a view that draws the spectrum but needs no SAR."""

    s: np.ndarray  # (r,), descending


@dataclass(frozen=True)
class TaskGram:
    """⟨τi[key], τj[key]⟩ for every pair of tasks on one parameter (any key, not only matrices)."""

    gram: np.ndarray  # (T, T)


@dataclass(frozen=True)
class MergedLayer:
    """One method's update ΔM on one key: its spectrum and the tasks' energy along its vectors."""

    s: np.ndarray  # (r,) σ(ΔM), descending
    proj: np.ndarray  # (T, r) ‖u_iᵀ Δt‖² for ΔM's left singular vectors u_i

    def captured(self, k: int) -> np.ndarray:
        """‖Πk Δt‖F for every task (T,), Πk the projector on ΔM's top-k left vectors."""
        return np.sqrt(self.proj[:, :k].sum(axis=1))


Result = LayerSpectra | TaskNorms | TaskGram | MergedSpectrum | MergedLayer
RESULT_TYPES: dict[str, type] = {"spectra": LayerSpectra, "norms": TaskNorms, "gram": TaskGram,
                                 "mspec": MergedSpectrum, "merged": MergedLayer}


def _nbytes(result: Result) -> int:
    return sum(getattr(result, f.name).nbytes for f in fields(result))


def _to_arrays(result: Result) -> dict[str, np.ndarray]:
    return {f.name: getattr(result, f.name) for f in fields(result)}


def resolve(method: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The method name and its parameters with defaults filled in (raises MethodError)."""
    return method, get_method(method).resolve(params)


def _rows_energy(u: torch.Tensor, taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖u_iᵀ Δt‖² for every task and column of ``u`` (m, r'), as one GEMM over the tasks side by
    side.  # (T, r')"""
    n = taus[0].shape[1]
    coeff = u.T @ torch.cat(list(taus), dim=1)  # (r', T·n)
    return coeff.square_().view(coeff.shape[0], len(taus), n).sum(2).T


def _projections(u: torch.Tensor, layer: Layer, lead: int = 0) -> np.ndarray:
    """‖u_iᵀ Δt‖² for every task and column of ``u`` (m, r').  # (T, r')

    Wide layers (m < n): u_iᵀ Gt u_i with Gt = Δt Δtᵀ (``Layer.left_grams``, shared by every method's
    basis on the layer): T·m²·r' products instead of T·m·r'·n. Otherwise the rows u_iᵀ Δt, of
    which the first ``lead`` are the Task Arithmetic sum's own rows (``u[:, :lead]`` are the sum's
    top left singular vectors), cached in the layer and shared with Iso-CTS's common block."""
    m, n = layer.taus[0].shape
    if m < n:
        grams = layer.left_grams()  # (T, m, m)
        energy = (grams.view(-1, m) @ u).view(len(layer.taus), m, -1).mul_(u).sum(1)  # (T, r')
        return energy.clamp_min_(0).double().cpu().numpy()
    parts = [layer.sum_rows(lead).square().sum(2)] if lead else []  # (T, lead)
    if lead < u.shape[1]:
        parts.append(_rows_energy(u[:, lead:], layer.taus))  # (T, r' − lead)
    return torch.cat(parts, 1).double().cpu().numpy() if parts else np.zeros((len(layer.taus), 0))


def _padded(s: np.ndarray, r: int) -> np.ndarray:
    """σ (r',) of r' ≤ r factors as the full spectrum (r,): the other directions have σ = 0."""
    return np.concatenate([s, np.zeros(r - len(s))])


def _padded_layer(s: np.ndarray, proj: np.ndarray, r: int) -> MergedLayer:
    """A MergedLayer of rank ``r`` from r' ≤ r factors (nothing of any task along the rest)."""
    return MergedLayer(s=_frozen(_padded(s, r)), proj=_frozen(np.pad(proj, ((0, 0), (0, r - proj.shape[1])))))


# A leading column of a basis within this 2-norm of the sum's own vector counts as that vector:
# Iso-CTS's common block is Uk itself, or Uk moved by rounding (~2e-7 through polar_extended),
# and float32 factors are orthonormal to about this anyway. Reading the sum's rows for such
# columns moves Σ_{i<k} ‖u_iᵀΔt‖² by at most 2·tol·√k of ‖Δt‖F².
SUM_VECTOR_TOL = 1e-6


def _sum_prefix(u: torch.Tensor, layer: Layer) -> int:
    """How many leading columns of ``u`` (m, r') are the Task Arithmetic sum's own top left singular
    vectors (Iso-CTS's common block), up to SUM_VECTOR_TOL; 0 when the sum's SVD was never needed."""
    known = layer.cache.sum_svd
    if known is None:
        return 0
    j = min(u.shape[1], known[0].shape[1])
    same = torch.linalg.vector_norm(u[:, :j] - known[0][:, :j], dim=0) <= SUM_VECTOR_TOL  # (j,)
    return int(same.cumprod(0).sum())


# First-order bound (Davis–Kahan) on the angle by which the full eigen-rotation of a tied block
# would move one of its leading sum directions: up to it, those directions keep their order and
# only the rest of the block is rotated (the same bar as merging.linalg.KRYLOV_TOL).
DEFLATE_TOL = 1e-3


def _rest_first(layer: Layer, a: int, c: int, rest: torch.Tensor, lam_max: float) -> bool:
    """Whether ``order_ties`` leaves the sum directions u[:, a:c] = U[:, a:c] of a tied block where
    they are: the block's other columns ``rest`` (m, b − c) carry at most ``lam_max`` of the sum
    (‖restᵀ S‖² along any direction), below every σi² of them, and couple to them only by rounding.
    The block's Gram is then [[Σ², Σ² D], [Dᵀ Σ², H]] with D = U[:, a:c]ᵀ rest, and direction i moves
    by at most max_q |D_iq| / (1 − λ_max/σi²)."""
    u, sigma, _ = layer.sum_svd()
    s2 = sigma[a:c].double().square()  # (c − a,)
    if not bool((s2 > lam_max).all()):
        return False
    coupling = (u[:, a:c].T @ rest).abs().amax(1).double()  # (c − a,)
    return bool((coupling / (1 - lam_max / s2)).max() <= DEFLATE_TOL)


def _tie_ordered(u: torch.Tensor, s: torch.Tensor, layer: Layer) -> tuple[torch.Tensor, int]:
    """(``u`` with every tied block of ``s`` in ``order_ties``' order, by how much of the Task
    Arithmetic sum each direction carries, so that SAR's top-k_M basis is deterministic; how many
    leading columns are the sum's own vectors after it, for ``_projections``).

    A block that starts with the sum's own vectors followed by directions orthogonal to them
    (Iso-CTS: [Uk | task directions], one flat block) is ordered without its r×r eigenproblem:
    Uk carries σ1² … σk² of the sum and comes first as it is, and only the task directions are
    rotated among themselves, when ``_rest_first`` confirms it; otherwise the whole block is."""
    lead = _sum_prefix(u, layer)
    blocks = tied_blocks(s)
    if not blocks:
        return u, lead
    out = u.clone()
    total = layer.total().double()
    for a, b in blocks:
        c = min(max(a, lead), b)  # the block's sum vectors end at c
        if c == b:  # all of them the sum's own: its Gram is diag(σa², …), already in order
            continue
        lam, w = block_order(u[:, c:b].double(), total)  # (b − c,), (b − c, b − c)
        if c > a and not _rest_first(layer, a, c, u[:, c:b], float(lam[0])):
            c = a
            w = block_order(u[:, a:b].double(), total)[1]  # (b − a, b − a)
        out[:, c:b] = (u[:, c:b].double() @ w).to(u.dtype)
        lead = min(lead, c)
    return out, lead


def _on_sum_basis(spec: Method, total: np.ndarray, num_tasks: int) -> np.ndarray:
    """σ(ΔM) (r,) of a method built on the sum's left singular vectors, from σ(Σt Δt) (r,)."""
    return spec.sum_basis(torch.from_numpy(np.array(total)), num_tasks).numpy()


def _task_norms(layer: Layer) -> np.ndarray:
    return np.array([float(torch.linalg.vector_norm(tau.double())) for tau in layer.taus])  # (T,)


class _Results:
    """A thread-safe LRU of immutable results, bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, Result] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, name: tuple) -> Result | None:
        with self._lock:
            found = self._items.get(name)
            if found is not None:
                self._items.move_to_end(name)
            return found

    def put(self, name: tuple, result: Result) -> None:
        with self._lock:
            if name in self._items:
                return
            self._items[name] = result
            self._bytes += _nbytes(result)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._bytes -= _nbytes(self._items.popitem(last=False)[1])


class Decompositions:
    """Per-layer spectra and merged-update decompositions of one merger, computed on demand."""

    def __init__(self, merger: Merger, tasks: Sequence[str] | None = None, fingerprint: str | None = None,
                 store: ResultStore | None = None, max_bytes: int | None = None) -> None:
        self.merger = merger
        self.tasks = list(tasks) if tasks is not None else [f"task {i + 1}" for i in range(merger.num_tasks)]
        if len(self.tasks) != merger.num_tasks:
            raise ValueError(f"{len(self.tasks)} task names for {merger.num_tasks} task vectors")
        self.keys: list[str] = list(merger.matrix_keys)
        self.labels: dict[str, str] = layer_labels(self.keys)
        self.fingerprint = fingerprint
        self.store = store if fingerprint is not None else None
        self._results = _Results(settings.value("result_cache") if max_bytes is None else max_bytes)

    def shape(self, key: str) -> tuple[int, int]:
        m, n = self.merger.shapes[key]
        return int(m), int(n)

    def rank(self, key: str) -> int:
        return min(self.shape(key))

    def keys_of(self, keys: Iterable[str] | None) -> list[str]:
        """``keys`` restricted to matrix keys (all of them when None), in the given order."""
        return list(self.keys) if keys is None else [k for k in keys if k in self.labels]

    # -- caching ---------------------------------------------------------------------------------

    def _cached(self, name: tuple, compute: Callable[[], Result]) -> Result:
        """The result called ``name``: from memory, else the store, else ``compute()``."""
        found = self._results.get(name)
        if found is None and self.store is not None:
            arrays = self.store.get_layer(self.fingerprint, *name)
            if arrays is not None:
                found = RESULT_TYPES[name[0]](**{k: _frozen(v) for k, v in arrays.items()})
        if found is None:
            found = compute()
            if self.store is not None:
                self.store.put_layer(self.fingerprint, *name, _to_arrays(found))
        self._results.put(name, found)
        return found

    # -- parameter-free spectra ------------------------------------------------------------------

    def spectra(self, key: str) -> LayerSpectra:
        """σ(Δt) for every task, σ(Σt Δt) and ‖Δt‖F of one matrix key."""
        return self._cached(("spectra", key, "", ""), lambda: self._compute_spectra(key))

    def norms(self, key: str) -> np.ndarray:
        """‖Δt‖F for every task on one matrix key (T,): no decomposition, so the Alignment view
        does not pay for the task spectra it does not draw."""
        found = self._results.get(("spectra", key, "", ""))
        if found is not None:
            return found.norms
        return self._cached(("norms", key, "", ""), lambda: self._compute_norms(key)).norms

    def _compute_norms(self, key: str) -> TaskNorms:
        with self.merger.layer(key) as layer:
            return TaskNorms(norms=_frozen(_task_norms(layer)))

    def gram(self, key: str) -> np.ndarray:
        """The task vectors' Gram matrix on one parameter, (T, T) float64 (Overview's geometry sums
        it over keys, one key read at a time)."""
        def compute() -> TaskGram:
            with self.merger.layer(key) as layer:
                return TaskGram(gram=_frozen(key_gram(layer.taus)))
        return self._cached(("gram", key, "", ""), compute).gram

    def _compute_spectra(self, key: str) -> LayerSpectra:
        with self.merger.layer(key) as layer:
            task = np.stack([singular_values(tau).double().cpu().numpy() for tau in layer.taus])  # (T, r)
            total = layer.sum_svd()[1]  # (r,)
            norms = _task_norms(layer)  # (T,)
            return LayerSpectra(task=_frozen(task), total=_frozen(total.double().cpu().numpy()), norms=_frozen(norms))

    # -- merged updates --------------------------------------------------------------------------

    def _variant(self, method: str, params: Mapping[str, Any] | None, alpha: float | None
                 ) -> tuple[Method, dict[str, Any], float, str]:
        """(method, resolved params, α, the results' params key). The α that matters for ΔM's
        shape: only a method merging around the average (CART) mixes mean(τt) with α·Δ; for the
        others α only scales ΔM, so it is fixed to 1 (and left out of the key)."""
        spec = get_method(method)
        resolved = spec.resolve(params)
        a = float(1.0 if alpha is None else alpha) if spec.base == "average" else 1.0
        return spec, resolved, a, canonical_params({**resolved, **({"alpha": a} if a != 1.0 else {})})

    def merged_layer(self, key: str, method: str, params: Mapping[str, Any] | None = None,
                     alpha: float | None = None) -> MergedLayer:
        """σ(ΔM) and the tasks' projections for ``method`` with ``params`` on one key."""
        spec, resolved, a, tail = self._variant(method, params, alpha)
        return self._cached(("merged", key, spec.name, tail), lambda: self._compute_merged(key, spec, resolved, a))

    def merged_spectrum(self, key: str, method: str, params: Mapping[str, Any] | None = None,
                        alpha: float | None = None) -> np.ndarray:
        """σ(ΔM) (r,) of ``method`` on one key, without the projections SAR needs: from the sum's
        spectrum (TA, WA, Iso-C), the method's own ``Method.spectrum`` (Iso-CTS, TSV-M: no polar
        factor) or factors, else singular values of ΔM. Equal to ``merged_layer(...).s``, which it reuses when that is cached."""
        spec, resolved, a, tail = self._variant(method, params, alpha)
        full = self._results.get(("merged", key, spec.name, tail))
        if full is not None:
            return full.s
        return self._cached(("mspec", key, spec.name, tail),
                            lambda: MergedSpectrum(s=_frozen(self._spectrum(key, spec, resolved, a)))).s

    def _spectrum(self, key: str, spec: Method, params: Mapping[str, Any], alpha: float) -> np.ndarray:
        if spec.sum_basis is not None:
            return _on_sum_basis(spec, self.spectra(key).total, self.merger.num_tasks)
        if (spec.spectrum or spec.factors) is not None and spec.base == "pretrained":
            with self.merger.layer(key, self.merger.shared(spec, params)) as layer:
                own = spec.spectrum(layer, params) if spec.spectrum else spec.factors(layer, params)[1]  # (r',)
                s = own.double().cpu().numpy() * alpha
            return _padded(s, self.rank(key))
        offset = self.merger.layer_offset(key, spec, params, alpha)  # (m, n)
        return singular_values(offset.to(torch.float32)).double().cpu().numpy()

    def _sum_basis(self, key: str) -> MergedLayer:
        """σ(Σt Δt) and the projections on its left vectors (shared by TA, WA and Iso-C)."""
        def compute() -> MergedLayer:
            with self.merger.layer(key) as layer:
                u, s, _ = layer.sum_svd()  # (m, r), (r,)
                proj = _projections(u, layer, lead=u.shape[1])  # (T, r): all of them the sum's own rows
                return MergedLayer(s=_frozen(s.double().cpu().numpy()), proj=_frozen(proj))
        return self._cached(("merged", key, SUM_BASIS, ""), compute)

    def _compute_merged(self, key: str, spec: Method, params: Mapping[str, Any], alpha: float) -> MergedLayer:
        if spec.sum_basis is not None:
            basis = self._sum_basis(key)
            return MergedLayer(s=_frozen(_on_sum_basis(spec, basis.s, self.merger.num_tasks)), proj=basis.proj)
        if spec.factors is not None and spec.base == "pretrained":  # Δ's SVD is known: no SVD of Δ
            with self.merger.layer(key, self.merger.shared(spec, params)) as layer:
                u, s = spec.factors(layer, params)  # (m, r'), (r',)
                u, lead = _tie_ordered(u, s, layer)
                proj = _projections(u, layer, lead)  # (T, r')
            return _padded_layer(s.double().cpu().numpy() * alpha, proj, self.rank(key))
        with self.merger.layer(key) as layer:  # one hold of the key (its lock is re-entrant)
            offset = self.merger.layer_offset(key, spec, params, alpha)  # (m, n) θ − θ0
            u, s, _ = svd(offset.to(torch.float32))  # (m, r), (r,)
            u, lead = _tie_ordered(u, s, layer)
            proj = _projections(u, layer, lead)
        return MergedLayer(s=_frozen(s.double().cpu().numpy()), proj=_frozen(proj))

    def merged(self, method: str, params: Mapping[str, Any] | None = None, keys: Iterable[str] | None = None,
               progress: Progress | None = None, alpha: float | None = None) -> dict[str, MergedLayer]:
        """{key: MergedLayer} of ``method`` over ``keys`` (default: every matrix key), one layer at
        a time with progress."""
        report = progress or silent
        keys = self.keys_of(keys)
        name = get_method(method).display_name
        out = {}
        for i, key in enumerate(keys):
            out[key] = self.merged_layer(key, method, params, alpha)
            report((i + 1) / max(len(keys), 1), f"{name}: {self.labels[key]}")
        return out

    def all_spectra(self, keys: Iterable[str] | None = None, progress: Progress | None = None
                    ) -> dict[str, LayerSpectra]:
        """{key: LayerSpectra} over ``keys`` (default: every matrix key), with progress."""
        report = progress or silent
        keys = self.keys_of(keys)
        out = {}
        for i, key in enumerate(keys):
            out[key] = self.spectra(key)
            report((i + 1) / max(len(keys), 1), f"task spectra: {self.labels[key]}")
        return out
