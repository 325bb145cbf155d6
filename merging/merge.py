"""Merging: the in-memory ``Merger`` (decompositions cached across calls, for the app, sweeps
and the zoo) and the streaming ``merge_files`` (key by key from disk, for the CLI).

Every method returns θ = base + α·Δ (docs/design.md, Terms): base = θ0, except CART whose base is the
weight average θavg; weight averaging fixes α = 1/T. A method is a per-parameter function
``fn(Layer, params) -> Δ`` (merging/methods/common.py); ``Method.prepare`` runs a global pass
first (TIES's thresholds) and ``Method.base == "average"`` selects θavg.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from merging.device import pick_device
from merging.errors import MismatchError
from merging.io import open_checkpoint, safetensors_writer
from merging.methods.common import Layer
from merging.progress import Progress, scaled, silent
from merging.registry import Method, get_method
from merging.tensors import (COMPUTE_DTYPE, StateDict, check_compatible, check_finite, check_state_finite, is_matrix,
                             task_vector)

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
        a = self.fixed_alpha if self.fixed_alpha is not None else (1.0 if alpha is None else float(alpha))
        return {k: b + a * self.delta[k] for k, b in self.base.items()}


def _layer_delta(method: Method, params: Mapping[str, Any], layer: Layer) -> torch.Tensor:
    delta = method.fn(layer, params)
    if delta.shape != layer.taus[0].shape:  # pragma: no cover - a method bug, not user input
        raise RuntimeError(f"{method.name} returned {tuple(delta.shape)} for {layer.key}")
    return delta


def _base(method: Method, pretrained: torch.Tensor, layer: Layer) -> torch.Tensor:
    """θ0[key] in fp32, or θavg[key] = θ0 + mean(τt) for methods merging around the average."""
    base = pretrained.to(device=layer.taus[0].device, dtype=COMPUTE_DTYPE)
    return base + layer.mean() if method.base == "average" else base


class Merger:
    """θ0 and T fine-tuned state dicts (in-memory Mappings, e.g. a zoo's), decompositions cached.

    Task vectors are computed once (fp32, on ``device``); every decomposition a method needs
    that does not depend on its parameters or α (the SVD of Σt Δt, per-task SVDs, projections)
    is cached per key, so sweeps over Iso-CTS's fraction or CART's rank are cheap."""

    def __init__(self, pretrained: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                 device: str | torch.device | None = None) -> None:
        if len(finetuned) == 0:
            raise MismatchError("at least one fine-tuned model is needed to merge")
        self.device = pick_device(device)
        self.keys: list[str] = list(pretrained)
        for i, ft in enumerate(finetuned):
            check_compatible(pretrained, ft, f"fine-tuned model {i + 1}")
        self._pretrained = {k: pretrained[k].to(self.device, COMPUTE_DTYPE) for k in self.keys}
        check_state_finite(self._pretrained, "pretrained model")
        self._tvs: list[StateDict] = []
        for i, ft in enumerate(finetuned):
            tv = {k: task_vector(self._pretrained[k], ft[k].to(self.device)) for k in self.keys}
            check_state_finite(tv, f"fine-tuned model {i + 1}")
            self._tvs.append(tv)
        self.num_tasks: int = len(self._tvs)
        self.matrix_keys: list[str] = [k for k in self.keys if is_matrix(k, self._pretrained[k])]
        self._cache: dict[str, dict[str, Any]] = {k: {} for k in self.keys}

    def task_vectors(self) -> list[StateDict]:
        """The cached τt (fp32, on the merger's device). Shared: never mutate them."""
        return self._tvs

    def pretrained(self) -> StateDict:
        """θ0 in fp32 on the merger's device. Shared: never mutate it."""
        return self._pretrained

    def clear_cache(self) -> None:
        """Drop every cached decomposition (frees memory; the next update recomputes)."""
        self._cache = {k: {} for k in self.keys}

    def layer(self, key: str, shared: Mapping[str, Any] | None = None) -> Layer:
        """The per-key view methods compute from (its cache outlives the call)."""
        return Layer(key=key, taus=[tv[key] for tv in self._tvs], matrix=is_matrix(key, self._pretrained[key]),
                     cache=self._cache[key], shared=shared or {})

    def update(self, method: str, params: Mapping[str, float] | None = None,
               progress: Progress | None = None) -> MergeUpdate:
        """Base and Δ of ``method`` with ``params`` (defaults filled in; MethodError if invalid)."""
        spec = get_method(method)
        values = spec.resolve(params)
        report = progress or silent
        shared = spec.prepare(lambda t: self._tvs[t], self.num_tasks, values) if spec.prepare else {}
        base, delta = {}, {}
        for i, key in enumerate(self.keys):
            layer = self.layer(key, shared)
            delta[key] = _layer_delta(spec, values, layer)
            base[key] = _base(spec, self._pretrained[key], layer)
            report((i + 1) / len(self.keys), f"{spec.display_name}: {key}")
        return MergeUpdate(base=base, delta=delta, fixed_alpha=spec.alpha_for(self.num_tasks))

    def merged(self, method: str, params: Mapping[str, float] | None = None,
               alpha: float | None = None) -> StateDict:
        """The merged state dict θ = base + α·Δ, on the CPU in fp32."""
        return {k: v.cpu() for k, v in self.update(method, params).state(alpha).items()}


# ---------------------------------------------------------------------------------------------
# Streaming merge from files.

STREAM_CHUNK_ELEMENTS = 4 * 2 ** 20  # parameters read per pass over the files (bounds mapped pages)


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
    a = spec.alpha_for(num_tasks)
    a = a if a is not None else (1.0 if alpha is None else float(alpha))
    shared = spec.prepare(files.task_vector, num_tasks, values) if spec.prepare else {}
    layout = {key: (files.dtypes[key], files.shapes[key]) for key in files.keys}
    metadata = {"isoscope_method": spec.name, "isoscope_alpha": repr(a), "isoscope_params": repr(dict(values))}
    done, total = 0, sum(files.numel(k) for k in files.keys)
    step = scaled(report, 0.0, 0.99)
    with safetensors_writer(out, layout, metadata) as write:
        for chunk in _chunks(files.keys, files.numel, STREAM_CHUNK_ELEMENTS):
            ckpts = files.open()
            for key in chunk:
                pre = _read(ckpts[0], key, files.names[0], dev)
                taus = [task_vector(pre, _read(c, key, name, dev)) for c, name in zip(ckpts[1:], files.names[1:], strict=True)]
                layer = Layer(key=key, taus=taus, matrix=is_matrix(key, pre), shared=shared)
                write(key, _base(spec, pre, layer) + a * _layer_delta(spec, values, layer))  # cast to pre's dtype
                done += files.numel(key)
                step(done / max(total, 1), f"{spec.display_name}: {key}")
            del ckpts
    report(1.0, f"wrote {out}")
    log.info("merged %d fine-tuned files with %s into %s", num_tasks, spec.name, out)
