"""Inspect a pickle without running it: which globals it imports and which tensor storages
it declares.

Unpickling a file runs whatever callables its ``GLOBAL``/``REDUCE`` opcodes name (that is how a
``__reduce__`` payload calls ``os.system``). ``scan_pickles`` replays the opcodes with an
unpickler whose ``find_class`` never imports anything: every global becomes an inert stand-in
class (``Record``) that carries its dotted name, and every call, ``BUILD`` or item assignment on
it is only written down (arguments, state, items), never executed. Nothing from the file is executed, and memory stays proportional to the pickle's size (callers
cap that size).

The result lets ``merging.io`` (1) refuse files that need non-allowlisted globals (whole-module
checkpoints, hostile payloads) with a message that names them, and (2) check the storage sizes a
torch checkpoint declares against the bytes it actually holds, before torch allocates anything;
(3) hand the recorded objects to ``merging.pickle_reader``, which finds the tensors in them.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from dataclasses import dataclass, field
from typing import Any


class Record:
    """Stand-in for any global a pickle names (a class or a function). Instantiating or calling
    it, ``BUILD``, item assignment and appends are *recorded* on the instance, never executed, so
    ``merging.pickle_reader`` can later walk what the pickle describes. The class attribute
    ``qualname`` is the dotted name the pickle gave."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.list = args, kwargs, None, {}, []
        return obj

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Record:  # an instance called (chained payloads)
        return _Called(self, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)


class _Called(Record):
    """The result of calling a Record instance: ``args[0]`` is the callee."""

    qualname = "<call>"


@dataclass(frozen=True, slots=True)  # slots: a pickle's BUILD cannot rewrite it through __dict__
class StorageRef:
    """One storage a torch pickle points at through a persistent id."""

    type_name: str  # dotted name of the storage class, e.g. "torch.FloatStorage"
    key: str  # record name (zip) or root key (legacy)
    numel: int  # elements of type_name (bytes for UntypedStorage)
    view: tuple[str, int, int] | None = None  # legacy views: (view key, offset, numel) into the root


@dataclass
class PickleScan:
    """What ``scan_pickles`` saw. ``error`` is set when the bytes stopped being a valid pickle."""

    globals: list[str] = field(default_factory=list)
    storages: list[StorageRef] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)  # the top-level value of each pickle read
    error: str | None = None
    end: int = 0  # offset just past the last complete pickle


class _InertUnpickler(pickle._Unpickler):  # noqa: SLF001
    # The pure-Python unpickler keeps its memo in a dict: the C one allocates a list as long as
    # the largest memo index a file names (LONG_BINPUT 2**31 would mean gigabytes).

    def __init__(self, stream: io.BytesIO, scan: PickleScan, classes: dict[str, type]) -> None:
        super().__init__(stream)
        self._scan = scan
        self._classes = classes

    def find_class(self, module: str, name: str) -> type:
        module, name = _modern_name(module, name)
        qualname = f"{module}.{name}"
        self._scan.globals.append(qualname)
        if qualname not in self._classes:
            self._classes[qualname] = type("Record", (Record,), {"qualname": qualname})
        return self._classes[qualname]

    def persistent_load(self, pid: Any) -> Any:
        ref = _storage_ref(pid)
        if ref is not None:
            self._scan.storages.append(ref)
            return ref
        if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[1], type) and issubclass(pid[1], Record):
            return pid[1]  # legacy ('module', cls, file, source): the class, a global already recorded
        return Record


def _modern_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (protocol < 3 pickles, e.g. ``__builtin__.set``) as pickle itself maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _storage_ref(pid: Any) -> StorageRef | None:
    """('storage', storage_type, key, location, numel[, view_metadata]) -> StorageRef."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        return None
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not (isinstance(storage_type, type) and issubclass(storage_type, Record)):
        return None
    if not isinstance(key, str) or not _is_count(numel):
        return None
    view = pid[5] if len(pid) == 6 else None
    if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                 and _is_count(view[1]) and _is_count(view[2])):
        return None
    return StorageRef(storage_type.qualname, key, numel, view)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def scan_pickles(data: bytes, max_pickles: int = 1) -> PickleScan:
    """Replay up to ``max_pickles`` consecutive pickles in ``data`` without executing them.

    Stops quietly at the end of ``data``; a malformed or truncated pickle sets ``error``.
    """
    scan, classes = PickleScan(), {}
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        if stream.tell() >= len(data):
            break
        try:
            scan.values.append(_InertUnpickler(stream, scan, classes).load())
        except Exception as err:  # noqa: BLE001 - any failure (incl. RecursionError) means "not a pickle"
            scan.error = f"{type(err).__name__}: {err}"[:200]
            break
        scan.end = stream.tell()
    return scan
