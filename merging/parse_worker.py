"""Untrusted pickles are parsed in a short-lived process with resource limits, never in the app.

A pickle does not need to run code to hurt a shared server: a few hundred bytes can ask for
2**64 steps, overflow the C stack or allocate gigabytes. ``merging.budgets`` bounds the known
ways; this module bounds what is left. ``parse_isolated(path, size, kind)`` hands the file to a
fresh child process that sets ``RLIMIT_AS`` and ``RLIMIT_CPU`` (budgets ``parser memory MiB``,
``parser CPU s``), parses the pickle (and a torch zip's central directory) with
``merging.pickle_scan`` and ``merging.pickle_reader``, and returns only validated metadata as
JSON: tensor names, dtype names, sizes, strides, offsets and byte spans. The app reads the
tensors' bytes itself (``merging.io``). A crash, a limit hit or a wall-clock overrun
(``parser wall s``) in the child becomes an ``{"status": "error"}`` answer; the app process and
every other session carry on.

Children are forked from a small helper process (``python -I -S``: the standard library and this
package's torch-free modules only, started once per app process) so that each file costs a fork,
not an interpreter start. The helper never parses anything itself.

Answers (``status``): ``ok`` (``kind``, ``globals``, ``tensors``: name -> [storage key, dtype,
offset, size, stride, view [offset, elements] or null], ``spans``: storage key -> [start, bytes]); ``refuse`` (the
code-free reader cannot interpret it: ``kind``, ``globals``, ``reason``); ``broken`` (not a
complete pickle: ``globals``, ``error``); ``error`` (``message``, one line, without the path).

This module is torch-free (the helper runs without site-packages).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from merging.budgets import BudgetExceeded, exceeded, limit
from merging.errors import printable
from merging.pickle_reader import (ITEMSIZE, STORAGE_TYPES, StorageLayout, TensorRef, Uninterpretable, check_refs,
                                   legacy_layout, state_of, zip_layout)
from merging.pickle_scan import PickleScan, StorageRef, scan_pickles

log = logging.getLogger(__name__)

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch file
ROOT = str(Path(__file__).resolve().parents[1])
_EOCD, _EOCD64 = b"PK\x05\x06", b"PK\x06\x06"


# ---------------------------------------------------------------- the work (runs in the child)


def _zip_directory_check(path: str, size: int) -> None:
    """Members and central-directory bytes a zip declares, from its end record, within budget
    before ``zipfile`` builds an object per member (about 10× the directory's size)."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536 - 22))
        tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) < at + 22:
        return  # zipfile reports the missing end record itself
    members, cd_bytes = struct.unpack("<H", tail[at + 10:at + 12])[0], struct.unpack("<I", tail[at + 12:at + 16])[0]
    at64 = tail.rfind(_EOCD64, 0, at)
    if at64 >= 0 and len(tail) >= at64 + 56:  # zip64: the 64-bit counts
        members, cd_bytes = struct.unpack("<QQ", tail[at64 + 32:at64 + 48])
    if members > limit("zip members", size):
        raise exceeded("zip members", size)
    if cd_bytes > limit("zip directory bytes", size):
        raise exceeded("zip directory bytes", size)


def _zip_scan(path: str, size: int) -> tuple[PickleScan, Callable[[StorageRef], int], Callable[[], StorageLayout]]:
    """Scan data.pkl of a torch zip file; the scan, each storage record's byte size, and a
    builder of the storage layout."""
    _zip_directory_check(path, size)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise ValueError("a zip file, but not a torch checkpoint (no data.pkl)")
            for info in infos.values():
                if info.compress_type != zipfile.ZIP_STORED or info.header_offset + info.file_size > size:
                    raise ValueError(f"corrupted torch checkpoint (record '{printable(info.filename)}' is "
                                     "compressed or lies outside the file)")
            if infos[pkl[0]].file_size > limit("pickle bytes"):
                raise exceeded("pickle bytes")
            scan = scan_pickles(zf.read(pkl[0]), max_pickles=1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise ValueError(f"truncated or corrupted torch checkpoint ({_oneline(err)})") from err
    prefix = pkl[0][: -len("data.pkl")]
    records = {i.filename: (i.header_offset, i.file_size) for i in infos.values()}

    def layout() -> StorageLayout:
        with zipfile.ZipFile(path) as zf:
            return zip_layout(Path(path), prefix, records, zf.read)

    key = prefix + "data/"
    return scan, lambda ref: infos[key + ref.key].file_size if key + ref.key in infos else -1, layout


def _check_storages(scan: PickleScan, available: Callable[[StorageRef], int], size: int) -> None:
    """Every declared storage must fit in the bytes that back it (no huge allocations)."""
    total = 0
    for ref in {r.key: r for r in scan.storages}.values():
        dtype = STORAGE_TYPES.get(ref.type_name)
        if dtype is None:
            raise ValueError(f"unsupported storage type '{printable(ref.type_name)}'")
        nbytes = ref.numel * ITEMSIZE[dtype]
        total += nbytes
        if nbytes > available(ref) or total > size:
            raise ValueError(f"corrupted torch checkpoint (storage '{printable(ref.key)}' declares {nbytes} bytes, "
                             "more than the file holds)")


def _tensor_row(ref: TensorRef) -> list:
    view = list(ref.storage.view[1:]) if ref.storage.view else None  # [offset, elements] into the storage
    return [ref.storage.key, ref.dtype, ref.offset, list(ref.size), list(ref.stride), view]


def _read_head(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(min(size, limit("pickle bytes")))


def _scan_file(path: str, size: int, kind: str) -> tuple[str, PickleScan, Callable, Callable]:
    """(kind, scan, available bytes per storage, layout builder) for a zip, legacy or plain pickle."""
    if kind == "torch-zip":
        return (kind, *_zip_scan(path, size))
    scan = scan_pickles(_read_head(path, size), max_pickles=1 if kind == "unknown" else 5)
    if kind == "unknown":  # maybe an old-protocol pickle, else foreign bytes
        if scan.error or not scan.values:
            raise ValueError("is neither a safetensors file nor a torch checkpoint")
        scan = scan_pickles(_read_head(path, size), max_pickles=5)
    if not scan.error:
        kind = "legacy" if scan.values and scan.values[0] == TORCH_LEGACY_MAGIC else "plain-pickle"
    return kind, scan, lambda _ref: size, lambda: legacy_layout(Path(path), scan, size)


def parse_file(path: str, size: int, kind: str) -> dict:
    """The answer for one file (see the module docstring); runs inside the limited child."""
    kind, scan, available, build = _scan_file(path, size, kind)
    names = list(dict.fromkeys(scan.globals))
    if scan.error:
        return {"status": "broken", "kind": kind, "globals": names, "error": scan.error}
    if kind == "legacy" and len(scan.values) < 5:
        return {"status": "broken", "kind": kind, "globals": names, "error": "truncated torch checkpoint"}
    if kind == "plain-pickle":
        return {"status": "refuse", "kind": kind, "globals": names, "reason": None}
    _check_storages(scan, available, size)
    try:
        refs = state_of(scan.values[0 if kind == "torch-zip" else 3])
    except Uninterpretable as err:
        return {"status": "refuse", "kind": kind, "globals": names, "reason": _oneline(err)}
    layout = build()
    check_refs(layout, refs, size)
    return {"status": "ok", "kind": kind, "globals": names, "tensors": {k: _tensor_row(r) for k, r in refs.items()},
            "spans": {k: list(v) for k, v in layout.spans.items()}}


def _oneline(err: BaseException) -> str:
    try:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    except Exception:  # noqa: BLE001 - str() of a hostile value can itself fail
        first = type(err).__name__
    return printable(first, 160)


def answer(path: str, size: int, kind: str) -> dict:
    """``parse_file`` with every failure turned into an ``error`` answer (one line)."""
    try:
        return parse_file(path, size, kind)
    except BudgetExceeded as err:
        return {"status": "error", "message": str(err), "budget": True}
    except PermissionError:
        return {"status": "error", "message": "permission denied"}
    except OSError as err:
        return {"status": "error", "message": f"cannot read ({err.strerror or _oneline(err)})"}
    except Uninterpretable as err:
        return {"status": "error", "message": _oneline(err)}
    except ValueError as err:
        return {"status": "error", "message": _oneline(err)}
    except RecursionError:
        return {"status": "error", "message": "objects nested too deeply"}
    except MemoryError:
        return {"status": "error", "message": f"the parser ran out of memory ({limit('parser memory MiB')} MiB)"}
    except Exception as err:  # noqa: BLE001 - a raw exception here is a bug; still one clean line
        return {"status": "error", "message": f"unreadable ({type(err).__name__}: {_oneline(err)})", "bug": True}


# ---------------------------------------------------------------- the helper and its children


def _child(request: dict, out: int) -> None:
    """In the forked child: limits, parse, one JSON answer on ``out``, exit."""
    mib = limit("parser memory MiB")
    cpu = limit("parser CPU s")
    resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, mib * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    sys.setrecursionlimit(2000)
    gc.disable()  # short-lived: the cyclic collector would rescan a hostile pile of containers again and again
    result = answer(request["path"], request["size"], request["kind"])
    used = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = used.ru_utime + used.ru_stime  # CPU seconds this file cost (load-independent)
    data = json.dumps(result).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(out, view):]
    os._exit(0)


_SIGNALS = {signal.SIGXCPU: "hit its CPU limit ({cpu} s)", signal.SIGKILL: "was killed (memory or time limit)",
            signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "crashed (SIGABRT)", signal.SIGBUS: "crashed (SIGBUS)"}


def _outcome(pid: int, chunks: list[bytes], timed_out: bool) -> dict:
    """The answer of a finished (reaped here) or overdue (killed here) child."""
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        why = f"took longer than {limit('parser wall s')} s"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = _SIGNALS.get(sig, f"was killed by signal {sig}").format(cpu=limit("parser CPU s"))
    elif os.WEXITSTATUS(status) != 0 or not chunks:
        why = f"failed (exit status {os.WEXITSTATUS(status)}; memory limit {limit('parser memory MiB')} MiB)"
    else:
        return json.loads(b"".join(chunks))
    return {"status": "error", "message": f"the isolated parser {why}", "crash": True}


def _fork(request: dict) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            _child(request, w)
        finally:
            os._exit(3)
    os.close(w)
    return pid, r


def _run_batch(requests: list[dict], parallel: int) -> list[dict]:
    """One child per request, at most ``parallel`` at a time (files of a folder parse on all
    cores), each under its own limits and wall-clock deadline; answers in request order."""
    answers: list[dict | None] = [None] * len(requests)
    running: dict[int, tuple[int, int, float, list[bytes]]] = {}  # fd -> (index, pid, deadline, chunks)
    todo = list(enumerate(requests))
    while todo or running:
        while todo and len(running) < parallel:
            index, request = todo.pop(0)
            pid, fd = _fork(request)
            running[fd] = (index, pid, time.monotonic() + limit("parser wall s"), [])
        wait = max(0.0, min(d for _, _, d, _ in running.values()) - time.monotonic())
        ready = select.select(list(running), [], [], wait)[0]
        for fd in list(running):
            index, pid, deadline, chunks = running[fd]
            chunk = os.read(fd, 1 << 20) if fd in ready else None
            if chunk:
                chunks.append(chunk)
                continue
            if chunk is None and time.monotonic() < deadline:
                continue
            answers[index] = _outcome(pid, chunks, timed_out=chunk is None)
            os.close(fd)
            del running[fd]
    return answers


def serve() -> None:
    """The helper's loop: one JSON request per line on stdin (a list of files), one JSON answer per
    line on stdout (a list of answers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the app's terminal: the app decides
    parallel = max(1, len(os.sched_getaffinity(0)))
    for line in sys.stdin.buffer:
        try:
            requests = json.loads(line)
            reply = _run_batch(requests, parallel)
        except Exception as err:  # noqa: BLE001 - the helper must outlive any one request
            reply = [{"status": "error", "message": f"the isolated parser failed ({type(err).__name__})",
                      "crash": True}] * max(1, len(requests) if isinstance(requests, list) else 1)
        sys.stdout.buffer.write(json.dumps(reply).encode() + b"\n")
        sys.stdout.buffer.flush()


_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from merging.parse_worker import serve; serve()"


class _Helper:
    """The one helper process of this app process (started on first use, restarted if it dies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOT, ROOT], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
                                          start_new_session=True)
        return self._proc

    def ask(self, requests: list[dict]) -> list[dict]:
        with self._lock:
            proc = self._start()
            rounds = -(-len(requests) // max(1, len(os.sched_getaffinity(0))))  # batches of parallel children
            try:
                proc.stdin.write(json.dumps(requests).encode() + b"\n")
                proc.stdin.flush()
                ready = select.select([proc.stdout], [], [], rounds * limit("parser wall s") + 10)[0]
                line = proc.stdout.readline() if ready else b""
                answers = json.loads(line) if line else None
                if not (isinstance(answers, list) and len(answers) == len(requests)):
                    raise OSError("no answer")
                return answers
            except (OSError, ValueError):
                self.stop()
                return [{"status": "error", "message": "the isolated parser did not answer", "crash": True}] * len(
                    requests)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


_HELPER = _Helper()


_PREFETCHED: dict[tuple, dict] = {}  # file identity -> answer, parsed ahead by ``prefetch``
_PREFETCH_MAX = 256


def _identity(path: str, size: int, kind: str) -> tuple | None:
    """What must not change between a prefetch and the open that uses its answer."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, size, kind)


def prefetch(files: list[tuple[str | os.PathLike, int, str]]) -> None:
    """Parse several files at once (one child each, in parallel on the cores this process may
    use); the next ``parse_isolated`` of each unchanged file takes its answer instead of forking."""
    requests = [{"path": os.fspath(p), "size": size, "kind": kind} for p, size, kind in files]
    if len(requests) < 2:
        return
    for request, answer in zip(requests, _HELPER.ask(requests)):
        key = _identity(request["path"], request["size"], request["kind"])
        if key is not None and not answer.get("crash") and len(_PREFETCHED) < _PREFETCH_MAX:
            _PREFETCHED[key] = answer


def parse_isolated(path: str | os.PathLike, size: int, kind: str) -> dict:
    """Parse ``path`` (``size`` bytes; kind ``torch-zip``, ``pickle`` or ``unknown``) in a limited
    child process; the answer as described in the module docstring."""
    key = _identity(os.fspath(path), size, kind)
    answer = _PREFETCHED.pop(key, None) if key is not None else None
    return answer if answer is not None else _HELPER.ask([{"path": os.fspath(path), "size": size, "kind": kind}])[0]


if __name__ == "__main__":  # pragma: no cover
    serve()
