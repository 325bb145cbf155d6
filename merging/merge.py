"""Merging: the in-memory ``Merger`` (decompositions cached across calls, for the app, sweeps
and the zoo) and the streaming ``merge_files`` (key by key from disk, for the CLI).

Every method returns θ = base + α·Δ (docs/design.md, Terms): base = θ0, except CART whose base is the
weight average θavg; weight averaging fixes α = 1/T. A method is a per-parameter function
``fn(Layer, params) -> Δ`` (merging/methods/common.py) that merges each key independently once
its model-wide quantities are known: ``Method.prepare`` computes those in one streaming
pass (TIES' thresholds) and ``Method.base == "average"`` selects θavg. So one key's
merge (``Merger.layer_update``) equals that key of the whole-model merge.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from merging import settings
from merging import routes
from merging.device import pick_device
from merging.errors import MismatchError
from merging.io import open_checkpoint, safetensors_writer
from merging.methods.common import Layer, LayerCache, tensor_bytes
from merging.progress import Progress, scaled, silent
from merging.registry import Method, get_method
from merging.tensors import (COMPUTE_DTYPE, StateDict, all_finite, check_compatible, check_finite, is_matrix,
                             shape_of, task_vector)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class MergeUpdate:
    """θ = base + α·Δ for one method and parameter setting."""

    base: StateDict  # θ0 (fp32), or θavg for CART
    delta: StateDict  # Δ (fp32), every key of θ0
    fixed_alpha: float | None  # 1/T for weight averaging, else None

    def state(self, alpha: float | None = None) -> StateDict:
        """base + α·Δ (a fixed α wins over ``alpha``; α defaults to 1.0)."""
        a = effective_alpha(self.fixed_alpha, alpha)
        return {k: b + a * self.delta[k] for k, b in self.base.items()}


def effective_alpha(fixed: float | None, alpha: float | None) -> float:
    """The α a merge uses: the method's fixed α wins, else ``alpha``, else 1.0."""
    return fixed if fixed is not None else (1.0 if alpha is None else float(alpha))


def _layer_delta(method: Method, params: Mapping[str, Any], layer: Layer) -> torch.Tensor:
    with routes.layer(layer.taus[0].shape):
        delta = method.fn(layer, params)
    if delta.shape != layer.taus[0].shape:  # pragma: no cover - a method bug, not user input
        raise RuntimeError(f"{method.name} returned {tuple(delta.shape)} for {layer.key}")
    return delta


def _base(method: Method, pretrained: torch.Tensor, layer: Layer) -> torch.Tensor:
    """θ0[key] in fp32, or θavg[key] = θ0 + mean(τt) for methods merging around the average."""
    base = pretrained.to(dtype=COMPUTE_DTYPE)  # already on the layer's device
    return base + layer.mean() if method.base == "average" else base


@dataclass
class _Entry:
    """One key's θ0 and task vectors (fp32, on the merger's device) and the methods' cache."""

    pretrained: torch.Tensor  # shape of θ0[key]
    taus: list[torch.Tensor]  # T × shape of θ0[key]
    cache: LayerCache  # decompositions reused across parameter values
    nbytes: int = 0


class Merger:
    """θ0 and T fine-tuned models, merged one parameter (layer) at a time.

    The checkpoints stay where they are (lazy ``merging.io.Checkpoint`` views or in-memory state
    dicts): a key's θ0 and task vectors are read when a merge or a view first needs that key,
    together with every decomposition the methods cache for it (the SVD of Σt Δt, per-task
    SVDs, projections: what makes a sweep over Iso-CTS's fraction or CART's rank cheap). These
    per-key entries live in an LRU bounded by ``cache_bytes``, so memory is set by one layer
    across the T tasks plus the budget, not by the size of the zoo.

    Thread safety: one Merger may be shared by every browser session. Work on a key (reading it,
    running a method, reading its cache) happens under that key's lock (``layer``), because
    some caches move in place with the parameters (Iso-CTS's residual Grams follow k). Model-wide
    quantities (TIES thresholds) are computed once per parameter value under their own lock."""

    def __init__(self, pretrained: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                 device: str | torch.device | None = None, cache_bytes: int | None = None) -> None:
        if len(finetuned) == 0:
            raise MismatchError("at least one fine-tuned model is needed to merge")
        self.device = pick_device(device)
        self.keys: list[str] = list(pretrained)
        for i, ft in enumerate(finetuned):
            check_compatible(pretrained, ft, f"fine-tuned model {i + 1}")
        self._sources = (pretrained, list(finetuned))
        self.num_tasks: int = len(finetuned)
        self.shapes: dict[str, tuple[int, ...]] = {k: shape_of(pretrained, k) for k in self.keys}
        self.matrix_keys: list[str] = [k for k in self.keys if is_matrix(k, self.shapes[k])]
        self._matrix_set = frozenset(self.matrix_keys)
        self.cache_bytes = layer_cache_bytes() if cache_bytes is None else int(cache_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and _key_locks (_shared_lock guards _shared)
        self._key_locks: dict[str, threading.RLock] = {}
        self._shared: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._shared_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------

    def _read_pretrained(self, key: str) -> torch.Tensor:
        pre = self._sources[0][key].to(self.device, COMPUTE_DTYPE)
        check_finite(key, pre, "pretrained model")
        return pre

    def _read_task(self, key: str, task: int, pre: torch.Tensor) -> torch.Tensor:
        tau = task_vector(pre, self._sources[1][task][key].to(self.device))
        check_finite(key, tau, f"fine-tuned model {task + 1}")
        return tau

    def task_matrix(self, key: str, task: int) -> torch.Tensor:
        """τt[key] (fp32, on the merger's device), read afresh: nothing is kept."""
        return self._read_task(key, task, self._read_pretrained(key))

    def task_vector(self, task: int) -> StateDict:
        """τt over every key (one task at a time in memory)."""
        return {k: self.task_matrix(k, task) for k in self.keys}

    # -- per-key entries -------------------------------------------------------------------------

    def _key_lock(self, key: str) -> threading.RLock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.RLock())

    def _entry(self, key: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        pre = self._read_pretrained(key)
        entry = _Entry(pretrained=pre, taus=[self._read_task(key, t, pre) for t in range(self.num_tasks)],
                       cache=LayerCache())
        with self._lock:
            self._entries[key] = entry
        return entry

    def _account(self, key: str, entry: _Entry) -> None:
        """Re-measure ``entry`` and evict the least recently used others beyond the budget."""
        entry.nbytes = tensor_bytes([entry.pretrained, entry.taus]) + entry.cache.nbytes()
        with self._lock:
            total = sum(e.nbytes for e in self._entries.values())
            for old in list(self._entries):
                if total <= self.cache_bytes:
                    break
                if old != key:
                    total -= self._entries.pop(old).nbytes

    @contextmanager
    def _locked(self, key: str, shared: Mapping[str, Any] | None) -> Iterator[tuple[_Entry, Layer]]:
        if key not in self.shapes:
            raise KeyError(key)
        with self._key_lock(key):
            entry = self._entry(key)
            try:
                yield entry, Layer(key=key, taus=entry.taus, matrix=key in self._matrix_set, cache=entry.cache,
                                   shared=shared or {})
            finally:
                self._account(key, entry)

    @contextmanager
    def layer(self, key: str, shared: Mapping[str, Any] | None = None) -> Iterator[Layer]:
        """The per-key view methods compute from, held under the key's lock (its cache outlives
        the block unless evicted). Never mutate its tensors, nor keep them beyond the block."""
        with self._locked(key, shared) as (_, layer):
            yield layer

    def clear_cache(self) -> None:
        """Drop every cached key (frees memory; the next use reads and decomposes again)."""
        with self._lock:
            self._entries.clear()

    def cached_bytes(self) -> int:
        """Bytes held by the cached per-key entries."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    # -- merging ---------------------------------------------------------------------------------

    def shared(self, method: str | Method, params: Mapping[str, float] | None = None) -> Mapping[str, Any]:
        """The model-wide quantities ``method`` needs before any layer (TIES's per-task magnitude
        thresholds: one streaming pass, one task at a time), computed once per parameter value."""
        spec = _method(method)
        values = spec.resolve(params)
        prepare = spec.prepare
        if prepare is None:
            return {}
        name = (spec.name, repr(sorted(values.items())))
        with self._shared_lock:
            if name not in self._shared:
                self._shared[name] = prepare(self.task_vector, self.num_tasks, values)
            return self._shared[name]

    def _streamed_sum(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(θ0[key], Σt τt[key]) for a key not in the cache, without keeping its task vectors, in
        the order ``Layer.total`` adds them (so the sum is bitwise the same). None when the sum is
        not finite: the regular path then reads every τt and names the one holding NaN/Inf."""
        with self._lock:
            if key in self._entries:
                return None
        pre = self._read_pretrained(key)
        total = self._checkpoint_sum(key, pre)
        return (pre, total) if all_finite(total) else None

    def _checkpoint_sum(self, key: str, minus: torch.Tensor | None) -> torch.Tensor:
        """Σt (θt − ``minus``)[key], or Σt θt[key] without ``minus`` (``add_checkpoints``): every task
        at once, chunk by chunk, when the fine-tuned models are in memory; one task at a time when
        they are read from files (a key of every task at once would cost T tensors of memory)."""
        fts = self._sources[1]
        total = torch.empty(self.shapes[key], dtype=COMPUTE_DTYPE, device=self.device)
        if not any(hasattr(ft, "shape") for ft in fts):  # in memory (lazy checkpoints have ``shape``)
            add_checkpoints(total, [ft[key].to(self.device) for ft in fts], minus)
        else:
            for t, ft in enumerate(fts):
                add_checkpoints(total, [ft[key].to(self.device)], minus, into=t > 0)
        return total

    def _averaged_theta(self, spec: Method, values: Mapping[str, float], key: str, a: float) -> torch.Tensor:
        """θ[key] = α Σt θt for a ``linear`` method with αT = 1 (θ0 drops out: it is not read); a key
        that is not finite goes the regular way, which names the tensor at fault."""
        theta = self._checkpoint_sum(key, None).mul_(a)
        if all_finite(theta):
            return theta
        base, delta = self.layer_update(key, spec, values)
        return delta.mul_(a).add_(base)

    def layer_update(self, key: str, method: str | Method, params: Mapping[str, float] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, Δ) of ``method`` for one key: equal to that key of the whole-model ``update``.
        Δ is the caller's own tensor (never one the cache holds)."""
        spec = _method(method)
        values = spec.resolve(params)
        if spec.sum_basis is not None and key in self.shapes:  # Δ reads Σt τt alone
            with self._key_lock(key):
                streamed = self._streamed_sum(key)
            if streamed is not None:
                pre, total = streamed
                layer = Layer.of_sum(key, total, self.num_tasks, key in self._matrix_set, self.shared(spec, values))
                return _base(spec, pre, layer), _layer_delta(spec, values, layer)  # Δ is never cached here
        shared = self.shared(spec, values)
        with self._locked(key, shared) as (entry, layer):
            delta = _layer_delta(spec, values, layer)
            return _base(spec, entry.pretrained, layer), delta.clone() if _aliases(delta, layer) else delta

    def layer_offset(self, key: str, method: str | Method, params: Mapping[str, float] | None = None,
                     alpha: float | None = None) -> torch.Tensor:
        """θ − θ0 for one key: α·Δ, plus mean(τt) for methods merging around the average
        (CART's update from θ0 is mean τ + λ Σt c̃t)."""
        spec = _method(method)
        values = spec.resolve(params)
        a = effective_alpha(spec.alpha_for(self.num_tasks), alpha)
        with self.layer(key, self.shared(spec, values)) as layer:
            offset = _layer_delta(spec, values, layer) * a
            return offset + layer.mean() if spec.base == "average" else offset

    def update(self, method: str, params: Mapping[str, float] | None = None,
               progress: Progress | None = None) -> MergeUpdate:
        """Base and Δ of ``method`` with ``params`` over every key (defaults filled in;
        MethodError if invalid). Holds two models' worth of fp32: see ``iter_merged``."""
        spec = get_method(method)
        values = spec.resolve(params)
        report = progress or silent
        base, delta = {}, {}
        for i, key in enumerate(self.keys):
            base[key], delta[key] = self.layer_update(key, spec, values)
            report((i + 1) / len(self.keys), f"{spec.display_name}: {key}")
        return MergeUpdate(base=base, delta=delta, fixed_alpha=spec.alpha_for(self.num_tasks))

    def iter_merged(self, method: str, params: Mapping[str, float] | None = None, alpha: float | None = None,
                    progress: Progress | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, θ[key]) on the CPU in fp32, one key at a time (for evaluation and export)."""
        spec = get_method(method)
        values = spec.resolve(params)
        a = effective_alpha(spec.alpha_for(self.num_tasks), alpha)
        report = progress or silent
        for i, key in enumerate(self.keys):
            if averages(spec, a, self.num_tasks):  # a mean of the checkpoints
                yield key, self._averaged_theta(spec, values, key, a).cpu()
            else:
                base, delta = self.layer_update(key, spec, values)
                yield key, delta.mul_(a).add_(base).cpu()  # = base + a·Δ, in Δ's own buffer
            report((i + 1) / len(self.keys), f"{spec.display_name}: {key}")

    def merged(self, method: str, params: Mapping[str, float] | None = None,
               alpha: float | None = None, progress: Progress | None = None) -> StateDict:
        """The merged state dict θ = base + α·Δ, on the CPU in fp32, built key by key."""
        return dict(self.iter_merged(method, params, alpha, progress))

    def export(self, out: PathLike, method: str, params: Mapping[str, float] | None = None,
               alpha: float | None = None, metadata: Mapping[str, str] | None = None,
               progress: Progress | None = None) -> None:
        """Write θ (fp32 safetensors) to ``out`` key by key, each tensor as soon as it is merged."""
        layout = {key: (COMPUTE_DTYPE, self.shapes[key]) for key in self.keys}
        with safetensors_writer(out, layout, metadata) as write:
            for key, tensor in self.iter_merged(method, params, alpha, progress):
                write(key, tensor)


def averages(spec: Method, alpha: float, num_tasks: int) -> bool:
    """Whether θ = α Σt θt: a ``linear`` method with αT = 1 (θ0 drops out of θ0 + αΣt τt)."""
    return spec.linear and abs(alpha * num_tasks - 1.0) <= 1e-12


def _mean_theta(finetuned: Sequence[torch.Tensor], alpha: float) -> torch.Tensor | None:
    """α Σt θt over one key's fine-tuned tensors (``averages``), or None when it is not finite (the
    regular path then names the tensor at fault)."""
    theta = torch.empty(finetuned[0].shape, dtype=COMPUTE_DTYPE, device=finetuned[0].device)
    add_checkpoints(theta, finetuned)
    return theta if all_finite(theta.mul_(alpha)) else None


SUM_CHUNK = 1 << 18  # elements per chunk of ``add_checkpoints``: a chunk's operands (1 MiB each) stay in cache


def add_checkpoints(total: torch.Tensor, tensors: Sequence[torch.Tensor], minus: torch.Tensor | None = None,
                    into: bool = False) -> None:
    """total (+)= Σt (xt − ``minus``) over ``tensors`` in order (Σt xt without ``minus``), in
    float32, elementwise bitwise equal to adding ``task_vector``s (each τt rounded to float32,
    then added) however the tasks are split between calls; ``into`` adds to ``total``, else the
    first term overwrites it. Chunk by chunk, so that θ0's chunk, the sum's and the scratch stay in
    cache while every task is added: 1.9× faster than whole-tensor passes on a ViT-B/32 tower with
    T = 8."""
    out = total.view(-1)  # (N,)
    base = None if minus is None else minus.reshape(-1)
    flat = [x.reshape(-1) for x in tensors]
    scratch = torch.empty(min(SUM_CHUNK, out.numel()), dtype=out.dtype, device=out.device)
    for lo in range(0, out.numel(), SUM_CHUNK):
        hi = min(lo + SUM_CHUNK, out.numel())
        o, s = out[lo:hi], scratch[:hi - lo]
        b = None if base is None else base[lo:hi]
        for i, x in enumerate(flat):
            if i == 0 and not into:
                _term(x[lo:hi], b, o)
            elif b is None and x.dtype in _EXACT_IN_FLOAT32:  # the promotion is exact: no scratch
                o += x[lo:hi]
            else:
                _term(x[lo:hi], b, s)
                o += s


_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)


def _term(x: torch.Tensor, base: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = float32(x) − base (or float32(x)), rounded as ``task_vector`` rounds it: float16 and
    bfloat16 convert exactly, so the subtraction may promote them; other dtypes convert first."""
    if base is not None and x.dtype in _EXACT_IN_FLOAT32:
        torch.sub(x, base, out=out)
        return
    out.copy_(x)
    if base is not None:
        out.sub_(base)


def layer_cache_bytes() -> int:
    """The per-key cache budget: $ISOSCOPE_LAYER_CACHE_MB (default 512 MiB: a few of the largest
    layers of a ViT-B/32 or L/14 zoo, with their decompositions)."""
    return settings.value("layer_cache")


def _aliases(delta: torch.Tensor, layer: Layer) -> bool:
    """Whether ``delta`` is (a view of) a tensor the layer's cache owns (Task Arithmetic's Σt τt)."""
    return any(v.untyped_storage().data_ptr() == delta.untyped_storage().data_ptr() for v in layer.cache.tensors())


def _method(method: str | Method) -> Method:
    return get_method(method) if isinstance(method, str) else method


# ---------------------------------------------------------------------------------------------
# Streaming merge from files.



def _chunks(keys: Sequence[str], numel: Callable[[str], int], budget: int) -> Iterator[list[str]]:
    """Consecutive groups of keys whose sizes add up to at most ``budget`` (one key at least)."""
    group: list[str] = []
    size = 0
    for key in keys:
        n = numel(key)
        if group and size + n > budget:
            yield group
            group, size = [], 0
        group.append(key)
        size += n
    if group:
        yield group


def _check_files(pretrained: Any, finetuned: Sequence[Any], names: Sequence[str]) -> None:
    """Keys and shapes of every fine-tuned file must match the pretrained file's (from headers)."""
    for ckpt, name in zip(finetuned, names, strict=True):
        check_compatible(pretrained, ckpt, name)


def _read(ckpt: Any, key: str, name: str, device: torch.device) -> torch.Tensor:
    tensor = ckpt[key]
    if not tensor.is_floating_point():
        raise MismatchError(f"{name}: tensor '{key}' has non-float dtype {tensor.dtype}; cannot merge it")
    check_finite(key, tensor, name)
    return tensor.to(device)


class _Files:
    """The pretrained and fine-tuned files, reopened per chunk of keys so that no more than one
    chunk of each file stays mapped in memory."""

    def __init__(self, pretrained: PathLike, finetuned: Sequence[PathLike], trust_pickle: bool,
                 device: torch.device) -> None:
        self.paths = [pretrained, *finetuned]
        self.names = [f"pretrained file {pretrained}"] + [f"fine-tuned file {p}" for p in finetuned]
        self.trust_pickle = trust_pickle
        self.device = device
        first = self.open()
        self.keys: list[str] = list(first[0])
        self.shapes = {k: tuple(first[0].shape(k)) for k in self.keys}
        self.dtypes = {k: first[0].dtype(k) for k in self.keys}
        _check_files(first[0], first[1:], self.names[1:])

    def open(self) -> list[Any]:
        return [open_checkpoint(p, trust_pickle=self.trust_pickle) for p in self.paths]

    def numel(self, key: str) -> int:
        n = 1
        for d in self.shapes[key]:
            n *= d
        return n

    def task_vector(self, t: int) -> StateDict:
        """τt over every key (one task at a time in memory)."""
        pre, ft = open_checkpoint(self.paths[0], self.trust_pickle), open_checkpoint(self.paths[t + 1], self.trust_pickle)
        return {k: task_vector(_read(pre, k, self.names[0], self.device), _read(ft, k, self.names[t + 1], self.device))
                for k in self.keys}


def merge_files(pretrained: PathLike, finetuned: Sequence[PathLike], method: str, out: PathLike,
                params: Mapping[str, float] | None = None, alpha: float | None = None,
                device: str | torch.device | None = None, trust_pickle: bool = False,
                progress: Progress | None = None) -> None:
    """Merge checkpoint files into ``out`` (safetensors), streaming key by key.

    Tensors are read lazily (a chunk of keys at a time from every file) and each merged tensor
    is appended to the output file as soon as it exists (``safetensors_writer``), so peak memory
    is one chunk of every file plus one layer's work, however many tasks there are. Output keys
    and dtypes are the pretrained file's (fp16/bf16 are computed in fp32 and written back).
    Nothing is written when anything fails."""
    spec = get_method(method)
    values = spec.resolve(params)
    if not finetuned:
        raise MismatchError("at least one fine-tuned file is needed to merge")
    dev = pick_device(device)
    report = progress or silent
    files = _Files(pretrained, finetuned, trust_pickle, dev)
    num_tasks = len(finetuned)
    a = effective_alpha(spec.alpha_for(num_tasks), alpha)
    shared = spec.prepare(files.task_vector, num_tasks, values) if spec.prepare else {}
    layout = {key: (files.dtypes[key], files.shapes[key]) for key in files.keys}
    metadata = {"isoscope_method": spec.name, "isoscope_alpha": repr(a), "isoscope_params": repr(dict(values))}
    done, total = 0, sum(files.numel(k) for k in files.keys)
    step = scaled(report, 0.0, 0.99)
    with safetensors_writer(out, layout, metadata) as write:
        for chunk in _chunks(files.keys, files.numel, settings.value("stream_chunk")):
            ckpts = files.open()
            for key in chunk:
                fts = [_read(c, key, name, dev) for c, name in zip(ckpts[1:], files.names[1:], strict=True)]
                theta = _mean_theta(fts, a) if averages(spec, a, num_tasks) else None  # as ``iter_merged``
                if theta is None:
                    pre = _read(ckpts[0], key, files.names[0], dev)
                    layer = Layer(key=key, taus=[task_vector(pre, ft) for ft in fts], matrix=is_matrix(key, pre),
                                  shared=shared)
                    theta = _base(spec, pre, layer) + a * _layer_delta(spec, values, layer)
                write(key, theta)  # cast to pre's dtype
                done += files.numel(key)
                step(done / max(total, 1), f"{spec.display_name}: {key}")
            del ckpts
    report(1.0, f"wrote {out}")
    log.info("merged %d fine-tuned files with %s into %s", num_tasks, spec.name, out)
