"""Inspect a pickle without running it: which globals it imports and which tensor storages
it declares.

Unpickling a file runs whatever callables its ``GLOBAL``/``REDUCE`` opcodes name (that is how a
``__reduce__`` payload calls ``os.system``). ``scan_pickles`` replays the opcodes with an
unpickler whose ``find_class`` never imports anything: every global becomes an inert stand-in
class (``Record``) that carries its dotted name, and every call, ``BUILD`` or item assignment on
it is only written down (arguments, state, items), never executed. Nothing from the file is executed.

Work and memory are bounded by the budgets of ``merging.budgets`` (proportional to the pickle's
size): every opcode goes through a guard that counts opcodes and new objects, container sizes,
dict/set insertions, memo entries, open MARKs, distinct globals, name lengths and integer sizes.
Dict keys and set items are checked (``check_key``: scalars, records, or tuples of at most 64
nodes) before Python hashes them, since hashing a tuple DAG takes 2**64 steps and hashing a
10**6-deep tuple overflows the C stack. ``BUILD`` may only reach ``Record`` instances: the
storage records (``StorageRef``) cannot be rewritten after they were checked.

The result lets the isolated parser (``merging.parse_worker``) (1) name the globals a file
imports, for the refusal of files the code-free reader cannot interpret, (2) check the storage
sizes a torch checkpoint declares against the bytes it actually holds, and (3) hand the recorded
objects to ``merging.pickle_reader``, which finds the tensors in them. Torch-free on purpose.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from merging.budgets import BudgetExceeded, exceeded, limit


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
    spent: dict[str, int] = field(default_factory=dict)  # budget name -> amount used (merging.budgets)


class _InertUnpickler(pickle._Unpickler):  # noqa: SLF001
    # The pure-Python unpickler keeps its memo in a dict: the C one allocates a list as long as
    # the largest memo index a file names (LONG_BINPUT 2**31 would mean gigabytes). Its
    # ``dispatch`` is replaced by ``_GUARDED``: every opcode is counted against the budgets, dict
    # keys and set items are checked before Python hashes them, BUILD reaches only records.

    def __init__(self, stream: io.BytesIO, scan: PickleScan, classes: dict[str, type], nbytes: int) -> None:
        super().__init__(stream)
        self._scan, self._classes, self._nbytes = scan, classes, nbytes
        self._limits = {name: limit(name, nbytes) for name in COUNTED}
        self.objects_left = self._limits["objects"] - scan.spent.get("objects", 0)
        self.memo_limit = self._limits["memo"]

    def overspent(self) -> None:
        self.settle()
        raise exceeded("objects" if self.objects_left < 0 else "memo", self._nbytes)

    def settle(self) -> None:
        """Write the hot-loop counter back into ``scan.spent``."""
        self._scan.spent["objects"] = self._limits["objects"] - self.objects_left

    def spend(self, name: str, amount: int = 1) -> None:
        used = self._scan.spent.get(name, 0) + amount
        self._scan.spent[name] = used
        if used > self._limits[name]:
            raise exceeded(name, self._nbytes)

    def find_class(self, module: str, name: str) -> type:
        if len(module) + len(name) > limit("name chars"):
            raise exceeded("name chars")
        module, name = _modern_name(module, name)
        qualname = f"{module}.{name}"
        if qualname not in self._classes:
            self.spend("globals")
            self._scan.globals.append(qualname)
            self._classes[qualname] = type("Record", (Record,), {"qualname": qualname})
        return self._classes[qualname]

    def persistent_load(self, pid: Any) -> Any:
        ref = _storage_ref(pid)
        if ref is not None:
            self.spend("tensors")
            self._scan.storages.append(ref)
            return ref
        if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[1], type) and issubclass(pid[1], Record):
            return pid[1]  # legacy ('module', cls, file, source): the class, a global already recorded
        return Record


# ---------------------------------------------------------------- budgets per opcode

COUNTED = ("objects", "container", "keys", "memo", "globals", "tensors")
_OP = {name: getattr(pickle, name)[0] for name in dir(pickle) if name.isupper() and isinstance(
    getattr(pickle, name), bytes) and len(getattr(pickle, name)) == 1}
# Opcodes whose new object costs far more memory than their bytes (a 1-byte EMPTY_SET is a 216-byte
# set; a REDUCE on a record builds an instance with its own dict and list): only these count as
# "objects". Every opcode is at least one byte, so "opcodes" is bounded by "pickle bytes" itself
# and needs no counter; strings, numbers and memo lookups cost about what their bytes do.
_AMPLIFIERS = {_OP[n] for n in ("EMPTY_SET", "EMPTY_DICT", "EMPTY_LIST", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
                                "LIST", "DICT", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BINPERSID",
                                "PERSID", "GLOBAL", "STACK_GLOBAL", "BUILD", "DUP")}
_LEAVES = (str, bytes, int, float, bool, type(None), frozenset, Record, type, StorageRef)


def check_key(key: object) -> None:
    """A dict key or set item must be cheap to hash: scalars, records, or tuples of them with at
    most ``key nodes`` nodes in all (a tuple DAG or a 10**6-deep tuple is refused before Python
    hashes it: hashing those takes 2**64 steps or overflows the C stack)."""
    budget, todo = limit("key nodes"), [key]
    while todo:
        item = todo.pop()
        budget -= 1
        if budget < 0:
            raise exceeded("key nodes")
        if isinstance(item, tuple):
            todo.extend(item)
        elif not isinstance(item, _LEAVES):
            raise pickle.UnpicklingError(f"an unhashable {type(item).__name__} used as a dict key or set item")


def _size(obj: object) -> int:
    if isinstance(obj, Record):
        return len(obj.items) + len(obj.list)
    return len(obj) if isinstance(obj, (list, tuple, dict, set, frozenset)) else 0


def _keys(u: _InertUnpickler, keys: list) -> None:
    u.spend("keys", len(keys))
    for key in keys:
        if type(key) is not str:  # names, the common case, hash in time linear in their bytes
            check_key(key)


def _build_target(u: _InertUnpickler) -> None:
    if len(u.stack) < 2 or not isinstance(u.stack[-2], Record):
        raise pickle.UnpicklingError("BUILD aimed at something other than a recorded object")


def _marks(u: _InertUnpickler) -> None:
    if len(u.metastack) >= limit("depth") * 4:
        raise exceeded("depth")


def _container(u: _InertUnpickler) -> None:
    if u.stack and _size(u.stack[-1]) > u._limits["container"]:  # noqa: SLF001
        raise exceeded("container", u._nbytes)  # noqa: SLF001


def _memo(u: _InertUnpickler) -> None:
    if len(u.memo) > u._limits["memo"]:  # noqa: SLF001
        raise exceeded("memo", u._nbytes)  # noqa: SLF001


def _int(u: _InertUnpickler) -> None:
    value = u.stack[-1] if u.stack else 0
    if isinstance(value, int) and value.bit_length() > 8 * limit("int bytes"):
        raise exceeded("int bytes")


_PRE: dict[int, Callable[[_InertUnpickler], None]] = {
    _OP["SETITEM"]: lambda u: _keys(u, u.stack[-2:-1]),
    _OP["SETITEMS"]: lambda u: _keys(u, u.stack[0::2]),  # after a MARK, ``stack`` holds only the items
    _OP["DICT"]: lambda u: _keys(u, u.stack[0::2]),
    _OP["ADDITEMS"]: lambda u: _keys(u, u.stack),
    _OP["FROZENSET"]: lambda u: _keys(u, u.stack),
    _OP["BUILD"]: _build_target,
    _OP["MARK"]: _marks,
    _OP["STOP"]: _memo,  # the memo is also checked at every amplifying opcode (``_guard``); between
    # those it grows by at most one entry per byte
}
_POST: dict[int, Callable[[_InertUnpickler], None]] = {
    **{_OP[n]: _container for n in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "TUPLE", "LIST", "DICT",
                                     "FROZENSET")},
    **{_OP[n]: _int for n in ("INT", "LONG", "LONG1", "LONG4")},
}


def _guard(code: int, handler: Callable[[Any], None]) -> Callable[[_InertUnpickler], None]:
    """``handler`` with the checks of ``code``; opcodes with none keep their plain handler (speed)."""
    pre, post, new = _PRE.get(code), _POST.get(code), code in _AMPLIFIERS
    if pre is None and post is None and not new:
        return handler

    def run(u: _InertUnpickler) -> None:
        if new:
            u.objects_left -= 1
            if u.objects_left < 0 or len(u.memo) > u.memo_limit:
                u.overspent()
        if pre is not None:
            pre(u)
        handler(u)
        if post is not None:
            post(u)
    return run


_InertUnpickler.dispatch = {code: _guard(code, handler) for code, handler in pickle._Unpickler.dispatch.items()}  # noqa: SLF001


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
    if not isinstance(key, str) or len(key) > limit("name chars") or not _is_count(numel):
        return None
    view = pid[5] if len(pid) == 6 else None
    if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                 and _is_count(view[1]) and _is_count(view[2])):
        return None
    return StorageRef(storage_type.qualname, key, numel, view)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def scan_pickles(data: bytes, max_pickles: int = 1) -> PickleScan:
    """Replay up to ``max_pickles`` consecutive pickles in ``data`` without executing them, under
    the budgets of ``merging.budgets`` (proportional to ``len(data)``).

    Stops quietly at the end of ``data``; a malformed or truncated pickle sets ``error``; a budget
    exceeded raises ``BudgetExceeded``.
    """
    scan, classes = PickleScan(), {}
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        if stream.tell() >= len(data):
            break
        try:
            unpickler = _InertUnpickler(stream, scan, classes, len(data))
            scan.values.append(unpickler.load())
        except BudgetExceeded:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means "not a pickle"
            scan.error = f"{type(err).__name__}: {err}"[:200]
            break
        finally:
            unpickler.settle()
        scan.end = stream.tell()
    return scan
