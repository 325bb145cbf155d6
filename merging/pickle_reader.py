"""Read the tensors of a torch pickle without running any of it: whole pickled modules included.

``torch.save(model)`` writes a pickle that names the model's classes (``src.modeling.ImageEncoder``,
open_clip 2.0.2's ``open_clip.model.CLIP``/``VisualTransformer``, torchvision transforms, …);
unpickling it imports those modules and calls them. ``torch.load(weights_only=True)`` refuses
such files, and loading them for real needs the authors' source tree and runs whatever code the
file names. This reader does neither. ``merging.pickle_scan`` replays the opcodes with every
global replaced by an inert ``Record`` (nothing is imported or called; calls, ``BUILD`` state and
items are only written down). This module then *interprets* the records through one small
table, ``REBUILDERS``: torch's tensor and parameter rebuild functions become ``TensorRef``s
(storage, dtype, offset, size, stride); ``collections.OrderedDict`` and ``builtins.set`` are read
as the containers they describe; an ``nn.Module`` is recognised by the state torch pickles for
it (``_parameters``, ``_buffers``, ``_modules``) and flattened exactly as
``Module.state_dict()`` would (persistent buffers only). Every other record is data the reader
does not need (transforms, enums, a cache dir) or cannot interpret (a ``__reduce__`` payload in
place of a tensor): the latter raises ``Uninterpretable``, and ``merging.io`` then refuses the
file unless the user trusts it.

Tensor bytes are read lazily, one tensor at a time, from the file itself: the ``data/<key>``
records of a zip checkpoint (stored uncompressed) or the storages appended after the pickles of
a legacy checkpoint (an int64 element count, then the raw little-endian bytes, in the order of
the storage-key list). Every span is checked against the bytes that back it before it is read.

Only dense, strided tensors of the float, int and bool storages in ``STORAGE_TYPES`` are
accepted (``check_refs``): every view lies inside its storage, no view shows more elements than
it spans (an expanded stride-0 view is refused), and all tensors together stay within the
``output bytes`` budget, so what a file yields is bounded by the bytes it holds.

Torch-free on purpose: it runs in the isolated parser (``merging.parse_worker``); dtypes are
names (``"float32"``) that ``merging.io`` maps to torch dtypes, and ``merging.io`` reads the bytes.

Public API: ``Uninterpretable``; ``TensorRef``; ``STORAGE_TYPES``; ``ITEMSIZE``; ``state_of(value)``;
``StorageLayout`` with ``zip_layout(...)``/``legacy_layout(...)``; ``check_refs(layout, refs, size)``.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from merging.budgets import exceeded, limit
from merging.pickle_scan import PickleScan, Record, StorageRef, check_key

# storage class -> dtype name; the names are torch's (``getattr(torch, name)``)
STORAGE_TYPES: dict[str, str] = {
    "torch.DoubleStorage": "float64", "torch.FloatStorage": "float32", "torch.HalfStorage": "float16",
    "torch.BFloat16Storage": "bfloat16", "torch.LongStorage": "int64", "torch.IntStorage": "int32",
    "torch.ShortStorage": "int16", "torch.CharStorage": "int8", "torch.ByteStorage": "uint8",
    "torch.BoolStorage": "bool", "torch.UntypedStorage": "uint8", "torch.storage.UntypedStorage": "uint8",
}
ITEMSIZE: dict[str, int] = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
                            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
MAX_DEPTH = limit("depth")  # nesting of modules / wrappers; real models: < 10
MAX_TENSORS = limit("tensors", limit("pickle bytes"))  # names a module tree may yield


class Uninterpretable(ValueError):
    """The pickle describes something this reader does not turn into tensors (one-line reason)."""


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's elements live: ``size``/``stride``/``offset`` in elements of ``storage``."""

    storage: StorageRef
    dtype: str  # a key of ITEMSIZE
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @cached_property  # read several times per tensor as a file opens
    def extent(self) -> int:
        """Elements spanned from ``offset``: 1 + Σ (size_i − 1)·stride_i (0 for an empty tensor)."""
        if any(s == 0 for s in self.size):
            return 0
        return 1 + sum((s - 1) * st for s, st in zip(self.size, self.stride))

    @property
    def numel(self) -> int:
        return math.prod(self.size)


# ---------------------------------------------------------------- records -> tensors


def describe(value: object) -> str:
    """What a value is, for a message: a record's dotted name, else the Python type."""
    if isinstance(value, Record):
        return f"call of {value.args[0].qualname}" if type(value).qualname == "<call>" and value.args \
            and isinstance(value.args[0], Record) else type(value).qualname
    if isinstance(value, type) and issubclass(value, Record):
        return value.qualname
    return type(value).__name__


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > 64 or not all(_is_count(v) for v in value):
        raise Uninterpretable(f"a tensor with an invalid {what}")
    return tuple(value)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _from_storage(args: tuple) -> TensorRef:
    """``_rebuild_tensor[_v2](storage, offset, size, stride, ...)``."""
    if len(args) < 4 or not isinstance(args[0], StorageRef) or not _is_count(args[1]):
        raise Uninterpretable("a tensor rebuilt from something other than a storage")
    storage = args[0]
    if storage.type_name not in STORAGE_TYPES:
        raise Uninterpretable(f"a tensor of the unsupported storage type {storage.type_name}")
    size, stride = _ints(args[2], "size"), _ints(args[3], "stride")
    if len(size) != len(stride):
        raise Uninterpretable("a tensor whose size and stride disagree")
    return TensorRef(storage, STORAGE_TYPES[storage.type_name], args[1], size, stride)


def _from_data(args: tuple) -> TensorRef:
    """``_rebuild_parameter[_with_state](data, requires_grad, hooks[, state])``: the data."""
    tensor = tensor_of(args[0]) if args else None
    if tensor is None:
        raise Uninterpretable("a parameter without tensor data")
    return tensor


def _from_type(args: tuple) -> TensorRef:
    """``_rebuild_from_type_v2(func, new_type, args, state)``: a tensor subclass; its data."""
    if len(args) < 3 or not isinstance(args[0], type) or not isinstance(args[2], tuple):
        raise Uninterpretable("a tensor subclass in an unknown form")
    rebuild = REBUILDERS.get(args[0].qualname) if issubclass(args[0], Record) else None
    if rebuild is None:
        raise Uninterpretable(f"a tensor rebuilt by {describe(args[0])}")
    return rebuild(args[2])


# The only callables a pickle may name and still be read: each is *interpreted*, never imported.
REBUILDERS: dict[str, Callable[[tuple], TensorRef]] = {
    "torch._utils._rebuild_tensor_v2": _from_storage,
    "torch._utils._rebuild_tensor": _from_storage,
    "torch._utils._rebuild_parameter": _from_data,
    "torch._utils._rebuild_parameter_with_state": _from_data,
    "torch._tensor._rebuild_from_type_v2": _from_type,
}


def tensor_of(value: object) -> TensorRef | None:
    """The tensor a record stands for, or None when it is not a tensor."""
    if isinstance(value, Record) and type(value).qualname in REBUILDERS:
        return REBUILDERS[type(value).qualname](value.args)
    return None


def _mapping(value: object) -> Mapping | None:
    """A dict, or an ``OrderedDict`` record (items set one by one, or given as pairs)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, Record) and type(value).qualname == "collections.OrderedDict":
        pairs = value.args[0] if value.args and isinstance(value.args[0], (list, tuple)) else []
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise Uninterpretable("an OrderedDict built from something other than pairs")
        for key, _ in pairs:
            check_key(key)
        return dict(pairs) | value.items
    return None


def _names(value: object) -> set:
    """The names in a pickled set (``_non_persistent_buffers_set``): a set, or a ``builtins.set`` record."""
    if isinstance(value, (set, frozenset)):
        return set(value)
    if isinstance(value, Record) and type(value).qualname in ("builtins.set", "builtins.frozenset") and value.args:
        items = value.args[0] if isinstance(value.args[0], (list, tuple, set)) else ()
        for item in items:
            check_key(item)
        return set(items)
    return set()


def _module_state(value: object) -> dict | None:
    """The ``__dict__`` torch pickles for an ``nn.Module`` (None when ``value`` is not one)."""
    if not isinstance(value, Record) or value.state is None:
        return None
    state = value.state[0] if isinstance(value.state, tuple) and len(value.state) == 2 else value.state
    if isinstance(state, dict) and _mapping(state.get("_parameters")) is not None \
            and _mapping(state.get("_modules")) is not None:
        return state
    return None


def _walk_module(state: dict, prefix: str, out: dict[str, TensorRef], depth: int, seen: set[int]) -> None:
    """``Module.state_dict()`` on records: parameters, persistent buffers, then submodules. Each
    module is walked once (``seen``): a file whose children repeat one object at every level
    would otherwise declare 2**depth names."""
    if depth > MAX_DEPTH:
        raise exceeded("depth")
    ids = {id(state), id(state["_modules"])}
    if ids & seen:
        raise ValueError("a module appears twice in its own tree (a repeated or shared submodule)")
    seen |= ids
    skip = _names(state.get("_non_persistent_buffers_set"))
    tensors = [*(_mapping(state["_parameters"]) or {}).items(),
               *((k, v) for k, v in (_mapping(state.get("_buffers")) or {}).items() if k not in skip)]
    for name, value in tensors:
        if value is None:
            continue
        tensor = tensor_of(value)
        if tensor is None:
            raise Uninterpretable(f"parameter '{prefix}{name}' is a {describe(value)}, not a tensor")
        out[f"{prefix}{name}"] = tensor
        if len(out) > MAX_TENSORS:
            raise exceeded("tensors", limit("pickle bytes"))
    for name, child in (_mapping(state["_modules"]) or {}).items():
        if child is None:
            continue
        sub = _module_state(child)
        if sub is None:
            raise Uninterpretable(f"submodule '{prefix}{name}' is a {describe(child)}, not a module")
        _walk_module(sub, f"{prefix}{name}.", out, depth + 1, seen)


def state_of(value: object, depth: int = 0) -> dict[str, TensorRef]:
    """The state dict a pickled value stands for: a module's ``state_dict()``, a mapping of
    names to tensors, or the ``state_dict`` entry of a wrapper; ``Uninterpretable`` otherwise."""
    if depth > MAX_DEPTH:
        raise exceeded("depth")
    module = _module_state(value)
    if module is not None:
        out: dict[str, TensorRef] = {}
        _walk_module(module, "", out, 0, set())
        return out
    mapping = _mapping(value)
    if mapping is None:
        raise Uninterpretable(f"it holds a {describe(value)}, not a model or a state dict")
    inner = mapping.get("state_dict")
    if inner is not None and (_mapping(inner) is not None or _module_state(inner) is not None):
        return state_of(inner, depth + 1)
    out = {}
    for key, item in mapping.items():
        tensor = tensor_of(item)
        if not isinstance(key, str) or tensor is None:
            raise Uninterpretable(f"entry '{str(key)[:60]}' is a {describe(item)}, not a tensor")
        out[key] = tensor
    return out


# ---------------------------------------------------------------- where the bytes are


@dataclass(frozen=True)
class StorageLayout:
    """Byte offset and byte length of every storage (by key) inside the checkpoint file."""

    spans: dict[str, tuple[int, int]]


def _little_endian(ok: bool, what: str) -> None:
    if not ok or sys.byteorder != "little":
        raise Uninterpretable(f"{what}: big-endian tensor data is not supported")


def zip_layout(path: Path, prefix: str, records: Mapping[str, tuple[int, int]], read_record: Callable[[str], bytes]
               ) -> StorageLayout:
    """Spans of ``<prefix>data/<key>`` records; ``records`` maps a record name to its (local
    header offset, size); the local header gives where the data starts."""
    if f"{prefix}byteorder" in records:
        _little_endian(read_record(f"{prefix}byteorder").strip() == b"little", str(path))
    spans = {}
    with open(path, "rb") as f:
        for name, (header, size) in records.items():
            if not name.startswith(f"{prefix}data/"):
                continue
            f.seek(header)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"record '{name[:60]}' has no local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            spans[name[len(prefix) + len("data/"):]] = (header + 30 + name_len + extra_len, size)
    return StorageLayout(spans)


def legacy_layout(path: Path, scan: PickleScan, size: int) -> StorageLayout:
    """Spans of a legacy file's storages: after the 5 pickles, per key of the key list, an int64
    element count then the elements (itemsize from the storage's type)."""
    info, keys = scan.values[2], scan.values[4]
    _little_endian(not isinstance(info, dict) or info.get("little_endian", True) is True, str(path))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("the storage key list is not a list of names")
    types = {ref.key: ref.type_name for ref in scan.storages}
    spans, pos = {}, scan.end
    with open(path, "rb") as f:
        for key in keys:
            if key not in types or types[key] not in STORAGE_TYPES:
                raise ValueError(f"storage '{key[:60]}' is listed but never used")
            f.seek(pos)
            head = f.read(8)
            count = int.from_bytes(head, "little") if len(head) == 8 else -1
            nbytes = count * ITEMSIZE[STORAGE_TYPES[types[key]]]
            if count < 0 or pos + 8 + nbytes > size:
                raise ValueError(f"storage '{key[:60]}' lies outside the file")
            spans[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
    return StorageLayout(spans)


def _view(ref: TensorRef, span: tuple[int, int], name: str) -> tuple[int, int]:
    """(first element, elements) of the storage view ``ref`` indexes into, checked against the span."""
    stored = span[1] // ITEMSIZE[ref.dtype]
    offset, count = (ref.storage.view[1], ref.storage.view[2]) if ref.storage.view else (0, stored)
    if not (0 <= offset and 0 <= count and offset + count <= stored and 0 <= span[0]):
        raise ValueError(f"tensor '{name[:60]}' has a view outside its storage")
    return offset, count


def check_refs(layout: StorageLayout, refs: Mapping[str, TensorRef], size: int) -> None:
    """Every tensor must be what it claims (``size``: the file's bytes): inside its storage's
    bytes (and its view) with a non-negative offset, showing no more elements than it spans (an
    expanded stride-0 view would allocate far beyond the file), and all of them together within
    the ``output bytes`` budget."""
    total, most = 0, limit("output bytes", size)
    for name, ref in refs.items():
        span = layout.spans.get(ref.storage.key)
        if span is None:
            raise ValueError(f"tensor '{name[:60]}' points at a storage the file does not hold")
        if ref.dtype not in ITEMSIZE or span[0] + span[1] > size or span[1] < 0:
            raise ValueError(f"tensor '{name[:60]}' points at bytes outside the file")
        _, limit_ = _view(ref, span, name)
        if not (ref.offset >= 0 and all(s >= 0 for s in ref.size) and all(s >= 0 for s in ref.stride)):
            raise ValueError(f"tensor '{name[:60]}' has a negative offset, size or stride")
        if ref.extent and ref.offset + ref.extent > limit_:
            raise ValueError(f"tensor '{name[:60]}' spans {ref.offset + ref.extent} elements of a "
                             f"{limit_}-element storage")
        if ref.numel > ref.extent:
            raise ValueError(f"tensor '{name[:60]}' is an expanded view ({ref.numel} elements from "
                             f"{ref.extent} stored; stride 0 or overlapping)")
        total += ref.numel * ITEMSIZE[ref.dtype]
        if total > most:
            raise exceeded("output bytes", size)


__all__ = ["ITEMSIZE", "REBUILDERS", "STORAGE_TYPES", "StorageLayout", "TensorRef", "Uninterpretable", "check_refs",
           "describe", "legacy_layout", "state_of", "tensor_of", "zip_layout"]
