"""Checkpoint IO, hardened against hostile and broken files (docs/safety.md).

Public API (other rooms rely on it):
- ``open_checkpoint(path, trust_pickle=False) -> Checkpoint``: a lazy read-only Mapping with
  ``keys()``, ``shape(key)``, ``dtype(key)``, ``get(key)``/``[key] -> Tensor`` (as stored) and
  ``load() -> StateDict``. Tensors are read one key at a time (safetensors tensors by positional
  reads, no memory map; torch zip files through torch's memory map), so the engine can stream
  layer by layer.
- ``load_state_dict(path, trust_pickle=False) -> StateDict``.
- ``save_safetensors(state, path, metadata=None)``: atomic (temp file, fsync, rename), and
  ``safetensors_writer(path, layout)`` for streaming one tensor at a time.
- ``convert_to_safetensors(src, dst, trust_pickle) -> Path``: the one-time conversion offered for
  pickled checkpoints.

What is read: the format is sniffed from the bytes, not the suffix.
- safetensors: the header is validated *before* the library sees it (length within the file and
  ≤ $ISOSCOPE_MAX_HEADER_MB, 16 MiB by default, JSON object without duplicate keys, known dtypes, shape × itemsize == byte span, spans
  inside the data area, contiguous, no overlaps), so a header declaring a 10^15-byte tensor is an
  error, not an allocation.
- torch files (zip, legacy, or a plain pickle): parsed in a separate parser process with
  resource limits (``merging.parse_worker``), which replays the pickle inertly under budgets
  (``merging.pickle_scan``, ``merging.budgets``) and interprets it with the code-free reader
  (``merging.pickle_reader``: state dicts and whole pickled modules such as the task_vectors
  layout; nothing imported or called). It returns only names, dtypes, sizes, strides and byte
  spans; this process re-validates them and reads each tensor's bytes itself, lazily. What the
  reader cannot interpret (``__reduce__`` payloads in place of tensors, self-rebuilding objects)
  raises ``UntrustedPickleError`` unless ``trust_pickle=True`` (then ``torch.load`` runs here).
Every failure is a ``CheckpointError`` whose one-line message starts with the file's path
(``error_boundary``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merging import settings
from merging.budgets import BudgetExceeded
from merging.errors import CheckpointError, IsoscopeError, UntrustedPickleError, printable
from merging.parse_worker import TORCH_LEGACY_MAGIC, parse_isolated, prefetch  # noqa: F401 - the magic is re-exported
from merging.pickle_reader import ITEMSIZE, STORAGE_TYPES, StorageLayout, TensorRef, check_refs
from merging.pickle_scan import StorageRef
from merging.tensors import StateDict

log = logging.getLogger(__name__)

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
PICKLE_PROTO = 0x80

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in ITEMSIZE}  # the reader's dtypes
# Used only if torch's private allowlist cannot be read: what a plain tensor state dict needs.
_FALLBACK_SAFE_GLOBALS = frozenset({
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch.nn.parameter.Parameter", "torch.Size",
    *STORAGE_TYPES,
})


def _safe_globals() -> frozenset[str]:
    """Dotted names ``torch.load(weights_only=True)`` accepts (torch's own allowlist)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals()) | _FALLBACK_SAFE_GLOBALS
    except (ImportError, AttributeError):  # private API moved: fall back to the minimal list
        return _FALLBACK_SAFE_GLOBALS


SAFE_GLOBALS = _safe_globals()


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data area (after the header)
    end: int


@dataclass
class _Opened:
    """What a format reader hands the Checkpoint: metadata per key and a per-key reader."""

    format: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    read: Callable[[str], torch.Tensor]


def _oneline(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return printable(first, 160)


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """Turn OSError (permissions, vanished files, I/O errors) into a CheckpointError."""
    try:
        yield
    except PermissionError as err:
        raise CheckpointError(f"{path}: permission denied") from err
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from err


@contextmanager
def error_boundary(path: Path) -> Iterator[None]:
    """Whatever goes wrong reading ``path`` leaves as the project's error, with the file's name
    and one line. A raw exception reaching here is a bug: it is logged with its traceback, and
    the message says "unexpected" so the fuzz tests catch it."""
    try:
        yield
    except (IsoscopeError, KeyError):
        raise
    except Exception as err:  # noqa: BLE001 - the boundary
        log.exception("unexpected error reading %s", path)
        raise CheckpointError(f"{path}: unexpected error while reading ({type(err).__name__}: "
                              f"{_oneline(err)})") from err


def _file_size(path: Path) -> int:
    """Size of a regular, non-empty file; CheckpointError for anything else."""
    try:
        st = path.stat()
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such file") from err
    except PermissionError as err:
        raise CheckpointError(f"{path}: permission denied") from err
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from err
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (pick the file inside it)")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: is not a regular file")
    if st.st_size == 0:
        raise CheckpointError(f"{path}: is empty")
    return st.st_size


def _read_bytes(path: Path, offset: int, count: int) -> bytes:
    with _os_errors(path), open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)


def _sniff(path: Path, head: bytes) -> str:
    """Which reader: by content first, then by suffix (for the most useful error)."""
    if head[:4] in ZIP_MAGICS:
        return "torch-zip"
    # Before the pickle test: a safetensors header of 128 bytes starts with the byte 0x80 too.
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**40:
        return "safetensors"
    if head[:1] == bytes([PICKLE_PROTO]):
        return "pickle"
    if path.suffix == ".safetensors":
        return "safetensors"
    return "unknown"  # maybe a protocol 0/1 pickle, else foreign bytes


# ---------------------------------------------------------------- safetensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{printable(key)}'")
        seen[key] = value
    return seen


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _tensor_info(key: str, entry: object, data_len: int) -> TensorInfo:
    """Validate one header entry; ValueError says what is wrong."""
    name = printable(key)
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ValueError(f"tensor '{name}' lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ST_DTYPES:
        raise ValueError(f"tensor '{name}' has unknown dtype '{printable(dtype, 20)}'")
    if not isinstance(shape, list) or len(shape) > 64 or not all(_is_count(d) for d in shape):
        raise ValueError(f"tensor '{name}' has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ValueError(f"tensor '{name}' has invalid data_offsets")
    begin, end = offsets
    nbytes = math.prod(shape) * ST_DTYPES[dtype].itemsize
    if not begin <= end <= data_len:
        raise ValueError(f"tensor '{name}' lies outside the file ({end} > {data_len} bytes of data)")
    if end - begin != nbytes:
        raise ValueError(f"tensor '{name}' declares {nbytes} bytes but spans {end - begin}")
    return TensorInfo(ST_DTYPES[dtype], tuple(shape), begin, end)


def _check_layout(infos: dict[str, TensorInfo], data_len: int) -> None:
    """Spans must tile the data area exactly: no overlaps, no holes, nothing after the end."""
    cursor = 0
    for key, info in sorted(infos.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != cursor:
            what = "overlaps another tensor" if info.begin < cursor else "leaves a gap before it"
            raise ValueError(f"tensor '{printable(key)}' {what}")
        cursor = info.end
    if cursor != data_len:
        raise ValueError(f"tensors cover {cursor} of the {data_len} data bytes")


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without loading any tensor."""
    path = Path(path)
    size = _file_size(path)
    head = _read_bytes(path, 0, 8)
    if len(head) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
    header_len = int.from_bytes(head, "little")
    if header_len > min(size - 8, settings.value("max_header")):
        raise CheckpointError(f"{path}: not a valid safetensors file (header length {header_len} "
                              f"exceeds the {size}-byte file or the 16 MiB limit)")
    try:
        header = json.loads(_read_bytes(path, 8, header_len).decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ must map names to strings")
        data_len = size - 8 - header_len
        infos = {k: _tensor_info(k, v, data_len) for k, v in header.items()}
        _check_layout(infos, data_len)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: corrupted safetensors header ({_oneline(err)})") from err
    return infos


def _read_span(path: Path, offset: int, info: TensorInfo) -> torch.Tensor:
    """One tensor read with a plain positional read (no memory map, so reading a layer leaves
    no file pages resident in the process: memory stays bounded by what is kept)."""
    count = info.end - info.begin
    buffer = bytearray(count)
    view, got = memoryview(buffer), 0
    with _os_errors(path), open(path, "rb", buffering=0) as f:
        f.seek(offset + info.begin)
        while got < count and (n := f.readinto(view[got:])):  # a read returns at most ~2 GiB
            got += n
    if got != count:
        raise CheckpointError(f"{path}: truncated while reading a tensor ({got} of {count} bytes)")
    if count == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(buffer, dtype=info.dtype).view(info.shape)  # (*shape), owns ``buffer``


def _open_safetensors(path: Path, _size: int, _trust: bool) -> _Opened:
    infos = read_safetensors_header(path)
    data_start = 8 + int.from_bytes(_read_bytes(path, 0, 8), "little")

    def read(key: str) -> torch.Tensor:
        return _read_span(path, data_start, infos[key])

    return _Opened("safetensors", {k: i.shape for k, i in infos.items()},
                   {k: i.dtype for k, i in infos.items()}, read)


# ---------------------------------------------------------------- torch / pickle


def untrusted_message(path: Path, names: list[str], reason: str | None = None) -> str:
    """The one-line refusal: why (what the code-free reader could not interpret), and how to proceed."""
    unique = list(dict.fromkeys(names))
    shown = ", ".join(printable(n, 50) for n in unique[:3]) + (", …" if len(unique) > 3 else "")
    why = f"; the code-free reader cannot interpret it ({printable(reason, 100)})" if reason else ""
    return (f"{path}: refused: it is a pickled Python object (it imports {shown}){why} and loading it would "
            f"execute code from the file; if you trust its source, pass --trust-pickle (in the app, tick "
            f"'Trust these files') and convert it once to safetensors with: python -m merging convert "
            f"{path} --out {path.with_suffix('.safetensors')} --trust-pickle")


def _torch_load(path: Path, kind: str, weights_only: bool) -> object:
    """The trusted path only: the user said this file may run code."""
    try:
        if kind == "plain-pickle":
            with open(path, "rb") as f:
                return pickle.load(f)  # noqa: S301 - the user said they trust this file
        if path.suffix == ".safetensors":  # torch.load would hand such a name to safetensors
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=weights_only)
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=kind == "torch-zip")
    except Exception as err:  # noqa: BLE001 - torch raises many types for broken files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_oneline(err)})") from err


def _dense(value: object) -> bool:
    """A tensor with real values: dense, strided, on the CPU, of a float/int/bool dtype."""
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type == "cpu"
            and value.dtype in TORCH_DTYPES.values())


def _as_state_dict(path: Path, obj: object) -> StateDict:
    """nn.Module -> its state_dict(); {'state_dict': ...} unwrapped; then str -> dense Tensor only."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {printable(type(obj).__name__)}, not a state dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry '{printable(key)}' is a {printable(type(value).__name__)}, "
                                  f"not a tensor (expected a state dict of tensors)")
        if not _dense(value):
            raise CheckpointError(f"{path}: tensor '{printable(key)}' is not a dense CPU tensor of a float or "
                                  f"int dtype ({value.layout}, {value.device.type}, {value.dtype})")
    return dict(obj)


# ---------------------------------------------------------------- the isolated parser's answer


def _ints(value: object, count: int | None = None) -> bool:
    return isinstance(value, list) and (count is None or len(value) == count) and len(value) <= 64 and all(
        type(v) is int and 0 <= v < 2**62 for v in value)


def _refs_of(path: Path, answer: dict) -> tuple[StorageLayout, dict[str, TensorRef]]:
    """The layout and tensors of an ``ok`` answer, re-validated here (the app trusts no parser)."""
    spans, rows = answer.get("spans"), answer.get("tensors")
    if not (isinstance(spans, dict) and isinstance(rows, dict)) or not all(_ints(v, 2) for v in spans.values()):
        raise CheckpointError(f"{path}: the isolated parser gave a malformed answer")
    layout, refs = StorageLayout({k: tuple(v) for k, v in spans.items()}), {}
    for name, row in rows.items():
        if not (isinstance(row, list) and len(row) == 6 and isinstance(row[0], str) and row[1] in TORCH_DTYPES
                and _ints(row[2:3]) and _ints(row[3]) and _ints(row[4], len(row[3]))
                and (row[5] is None or _ints(row[5], 2))):
            raise CheckpointError(f"{path}: the isolated parser gave a malformed answer")
        storage = StorageRef("", row[0], 0, None if row[5] is None else ("", *row[5]))
        refs[name] = TensorRef(storage, row[1], row[2], tuple(row[3]), tuple(row[4]))
    return layout, refs


def _read_ref(path: Path, layout: StorageLayout, ref: TensorRef) -> torch.Tensor:
    """The tensor ``ref`` describes, read from ``path`` (only its own bytes; ``check_refs`` first)."""
    dtype = TORCH_DTYPES[ref.dtype]
    if ref.extent == 0:
        return torch.empty(ref.size, dtype=dtype)
    start, _ = layout.spans[ref.storage.key]
    view_offset = ref.storage.view[1] if ref.storage.view else 0
    buffer = bytearray(ref.extent * dtype.itemsize)
    with open(path, "rb") as f:
        f.seek(start + (view_offset + ref.offset) * dtype.itemsize)
        if f.readinto(buffer) != len(buffer):
            raise ValueError("file ended inside a tensor")
    tensor = torch.frombuffer(buffer, dtype=dtype).as_strided(ref.size, ref.stride)  # (extent,) -> (*size)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _code_free(path: Path, size: int, answer: dict) -> _Opened:
    """The tensors the isolated parser found, read lazily by this process."""
    layout, refs = _refs_of(path, answer)
    try:
        check_refs(layout, refs, size)
    except ValueError as err:
        raise CheckpointError(f"{path}: truncated or corrupted torch checkpoint ({_oneline(err)})") from err

    def read(key: str) -> torch.Tensor:
        try:
            with _os_errors(path):
                return _read_ref(path, layout, refs[key])
        except (ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: cannot read tensor '{printable(key)}' ({_oneline(err)})") from err

    log.info("%s: read without running code (%d tensors)", path, len(refs))
    return _Opened(answer["kind"], {k: r.size for k, r in refs.items()},
                   {k: TORCH_DTYPES[r.dtype] for k, r in refs.items()}, read)


def _open_torch(path: Path, size: int, trust: bool, kind: str) -> _Opened:
    """Parse in the isolated parser; open what it understood, refuse or (trusted) unpickle the rest."""
    answer = parse_isolated(path, size, kind)
    status = answer.get("status")
    if status == "error":
        error = BudgetExceeded if answer.get("budget") else CheckpointError
        raise error(f"{path}: {printable(answer.get('message'), 200)}")
    if status == "ok":
        return _code_free(path, size, answer)
    names = [g for g in answer.get("globals", []) if isinstance(g, str)]
    unsafe = [g for g in names if g not in SAFE_GLOBALS]
    kind = answer.get("kind", kind)
    if unsafe and not trust:
        raise UntrustedPickleError(untrusted_message(path, unsafe, answer.get("reason")))
    if status == "broken":
        what = "truncated torch checkpoint" if answer.get("error") == "truncated torch checkpoint" else \
            f"truncated or corrupted torch checkpoint ({printable(answer.get('error'), 120)})"
        raise CheckpointError(f"{path}: {what}")
    if kind == "plain-pickle" and not unsafe:
        raise CheckpointError(f"{path}: a plain Python pickle, not a torch checkpoint")
    if not trust:
        raise CheckpointError(f"{path}: not a state dict of tensors ({printable(answer.get('reason'), 120)})")
    state = _as_state_dict(path, _torch_load(path, kind, weights_only=not unsafe))
    return _Opened(kind, {k: tuple(v.shape) for k, v in state.items()},
                   {k: v.dtype for k, v in state.items()}, state.__getitem__)


_OPENERS: dict[str, Callable[[Path, int, bool], _Opened]] = {
    "safetensors": _open_safetensors,
    "torch-zip": lambda p, s, t: _open_torch(p, s, t, "torch-zip"),
    "pickle": lambda p, s, t: _open_torch(p, s, t, "pickle"),
    "unknown": lambda p, s, t: _open_torch(p, s, t, "unknown"),
}


# ---------------------------------------------------------------- public API


class Checkpoint(Mapping[str, torch.Tensor]):
    """A read-only, lazily loaded state dict backed by one file."""

    def __init__(self, path: str | Path, trust_pickle: bool = False) -> None:
        self.path = Path(path)
        with error_boundary(self.path):
            size = _file_size(self.path)
            opened = _OPENERS[_sniff(self.path, _read_bytes(self.path, 0, 16))](self.path, size, trust_pickle)
        if not opened.shapes:
            raise CheckpointError(f"{self.path}: holds no tensors")
        self.format = opened.format
        self._shapes, self._dtypes, self._read = opened.shapes, opened.dtypes, opened.read
        log.debug("opened %s (%s, %d tensors)", self.path, self.format, len(self._shapes))

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(key)
        with error_boundary(self.path):
            return self._read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` without reading its data."""
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        """Stored dtype of ``key`` without reading its data."""
        return self._dtypes[key]

    def load(self) -> StateDict:
        return {k: self[k] for k in self._shapes}


def open_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Open ``path`` lazily; CheckpointError (or UntrustedPickleError) if it cannot be read safely."""
    return Checkpoint(path, trust_pickle=trust_pickle)


def prefetch_checkpoints(paths: Iterable[str | Path]) -> None:
    """Parse the pickles among ``paths`` together, in parallel isolated children, ahead of the
    ``open_checkpoint`` calls that follow (a folder's files). Best effort: a file that cannot be
    read here is reported by its own open."""
    files = []
    for path in map(Path, paths):
        try:
            size = _file_size(path)
            kind = _sniff(path, _read_bytes(path, 0, 16))
        except IsoscopeError:
            continue
        if kind != "safetensors":
            files.append((path, size, kind))
    prefetch(files)


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> StateDict:
    return open_checkpoint(path, trust_pickle).load()


def process_umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success fsync it, give it a normal file's mode
    and rename it onto ``path`` (readers see the old file or the new one, never half); on any
    failure remove it. Every file Isoscope writes goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp made it 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


ST_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in ST_DTYPES.items()}
Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]


def _st_header(layout: Layout, metadata: Mapping[str, str] | None) -> bytes:
    """8-byte length + JSON header (key → dtype, shape, byte span in ``layout`` order), padded
    with spaces so the data starts 8-byte aligned, as the safetensors format specifies."""
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for key, (dtype, shape) in layout.items():
        if dtype not in ST_NAMES:
            raise CheckpointError(f"cannot write tensor '{key}': dtype {dtype} has no safetensors name")
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU contiguous tensor, without a copy."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


@contextmanager
def safetensors_writer(path: str | Path, layout: Layout,
                       metadata: Mapping[str, str] | None = None) -> Iterator[Callable[[str, torch.Tensor], None]]:
    """Stream a safetensors file: the header comes from ``layout`` (key → (dtype, shape), in
    write order) and the yielded ``write(key, tensor)`` appends each tensor's bytes, cast to its
    declared dtype, as it is produced, so the whole state never sits in memory. A tensor out of
    order or of another shape, or a missing one, is an error; atomic like ``atomic_path``."""
    pending = iter(layout.items())

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_st_header(layout, metadata))

        def write(key: str, tensor: torch.Tensor) -> None:
            want = next(pending, None)
            if want is None or want[0] != key or tuple(tensor.shape) != tuple(want[1][1]):
                expected = "nothing more" if want is None else f"'{want[0]}' {tuple(want[1][1])}"
                raise CheckpointError(f"{path}: got tensor '{key}' {tuple(tensor.shape)}, expected {expected}")
            f.write(_tensor_bytes(tensor.detach().to("cpu", want[1][0]).contiguous()))

        yield write
        missing = [key for key, _ in pending]
        if missing:
            raise CheckpointError(f"{path}: {len(missing)} tensors were never written (first: '{missing[0]}')")


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` atomically, tensor by tensor (``safetensors_writer``): tied or
    viewed tensors are written as the values they show, and nothing is copied whole."""
    layout = {key: (value.dtype, tuple(value.shape)) for key, value in state.items()}
    with safetensors_writer(path, layout, metadata) as write:
        for key, value in state.items():
            write(key, value)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def convert_to_safetensors(src: str | Path, dst: str | Path, trust_pickle: bool) -> Path:
    """Read ``src`` (any supported checkpoint; pickles only with ``trust_pickle``) and write it as
    safetensors at ``dst``: the one-time conversion after which no trust is needed."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: refusing to overwrite the file being converted")
    state = load_state_dict(src, trust_pickle=trust_pickle)
    save_safetensors(state, dst, metadata={"format": "pt", "converted_from": src.name})
    log.info("converted %s -> %s (%d tensors)", src, dst, len(state))
    return dst
