"""Untrusted pickles are parsed in separate processes with resource limits, never in the app.

A pickle does not need to run code to hurt a shared server: a few hundred bytes can ask for
2**64 steps, overflow the C stack or allocate gigabytes. ``merging.budgets`` bounds the known
ways; this module bounds what is left. ``parse_isolated(path, size, kind)`` hands the file to a
parser process (``python -I -S``: the standard library and this package's torch-free modules
only) that runs under ``RLIMIT_AS`` for its whole life and ``RLIMIT_CPU`` moved on for each file
(budgets ``parser memory MiB``, ``parser CPU s``), parses the pickle (and a torch zip's central
directory) with ``merging.pickle_scan`` and ``merging.pickle_reader``, and returns only
validated metadata as JSON: tensor names, dtype names, sizes, strides, offsets and byte spans.
The app reads the tensors' bytes itself (``merging.io``). A crash, a limit hit or a wall-clock
overrun (``parser wall s``, the process is killed) becomes an ``{"status": "error"}`` answer;
the app process and every other session carry on.

The processes form a small pool (one per core, each pinned to its core, started on first use): a
folder's files parse in parallel, and a warm process costs a file little more than its parse. A
process leaves after an unexpected error, when its memory stays high, or after ``RETIRE_AFTER``
files; a fresh one takes its place. A crash or a kill replaces it too.

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
import math
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


# ---------------------------------------------------------------- the parser processes


def _cpu_used() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _rss_mib() -> float:
    """This process's resident memory now (not its peak), MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _limit_cpu(seconds: int) -> None:
    """Let this process use ``seconds`` more CPU seconds from now: SIGXCPU at the soft limit (the
    hard limit stays where it was, so the next request can move the soft one on)."""
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = math.ceil(_cpu_used()) + seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _one(request: dict, served: int) -> dict:
    """One request in a worker: the CPU limit moved on, the cost and the retirement decision added
    to the answer."""
    before = _cpu_used()
    _limit_cpu(limit("parser CPU s"))
    result = answer(request["path"], request["size"], request["kind"])
    result["cpu_s"] = _cpu_used() - before  # CPU seconds this file cost (load-independent)
    result["retire"] = bool(result.get("bug")) or served + 1 >= RETIRE_AFTER or _rss_mib() > RETIRE_RSS_MIB
    return result


def serve() -> None:
    """A worker's loop: one JSON request per line on stdin (``path``, ``size``, ``kind``), one JSON
    answer per line on stdout. The address space is limited for the worker's whole life, the CPU
    per request; a worker leaves after an answer marked ``retire``. The cyclic collector stays off:
    it would rescan a hostile pile of containers again and again, and reference counting frees a
    parse's records; what cycles leave behind counts towards ``RETIRE_RSS_MIB``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the app's terminal: the app decides
    gc.disable()
    mib = limit("parser memory MiB") * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mib, mib))
    sys.setrecursionlimit(2000)
    for served, line in enumerate(sys.stdin.buffer):
        try:
            result = _one(json.loads(line), served)
        except Exception as err:  # noqa: BLE001 - a malformed request: answer, then leave
            result = {"status": "error", "message": f"the isolated parser failed ({type(err).__name__})",
                      "crash": True, "retire": True}
        sys.stdout.buffer.write(json.dumps(result).encode() + b"\n")
        sys.stdout.buffer.flush()
        if result["retire"]:
            return


_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from merging.parse_worker import serve; serve()"
_SIGNALS = {signal.SIGXCPU: "hit its CPU limit ({cpu} s)", signal.SIGKILL: "was killed (memory or time limit)",
            signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "crashed (SIGABRT)", signal.SIGBUS: "crashed (SIGBUS)"}


def _cores() -> list[int | None]:
    """The cores this process may use (one parser process each); unpinned where the OS cannot say."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return [None] * (os.cpu_count() or 1)


class _Worker:
    """One long-lived parser process (``python -I -S``: the standard library and this package's
    torch-free modules only), parsing one file at a time, pinned to one core."""

    def __init__(self, boot: str, core: int | None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot, ROOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
                                     start_new_session=True)
        if core is not None and hasattr(os, "sched_setaffinity"):  # woken together, unpinned workers
            # often share one core for a whole batch
            try:
                os.sched_setaffinity(self.proc.pid, {core})
            except OSError as err:
                log.debug("parser pinning: %s", err)

    def send(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        """The answer to the request sent (the worker is readable); an error answer if it died."""
        line = self.proc.stdout.readline()
        if line:
            try:
                return json.loads(line)
            except ValueError:
                pass
        return self.failed(timed_out=False)

    def failed(self, timed_out: bool) -> dict:
        """The error answer of a worker that died (or is killed now, when overdue)."""
        if timed_out:
            self.proc.kill()
        status = self.proc.wait()
        if timed_out:
            why = f"took longer than {limit('parser wall s')} s"
        elif status < 0:
            why = _SIGNALS.get(-status, f"was killed by signal {-status}").format(cpu=limit("parser CPU s"))
        else:
            why = f"failed (exit status {status}; memory limit {limit('parser memory MiB')} MiB)"
        return {"status": "error", "message": f"the isolated parser {why}", "crash": True, "retire": True}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class _Pool:
    """The parser processes of this app process: one per core this process may use, each pinned
    to its core, started on first use and kept between files (a warm process parses a small file
    in about what the parse itself costs; a fresh one per file would add an interpreter start or a
    fork and a cold heap to each), replaced when one leaves (``retire``: after an unexpected error,
    when its memory stays above ``RETIRE_RSS_MIB`` after a file, or after ``RETIRE_AFTER`` files),
    crashes, or overruns ``parser wall s`` (killed). A file refused by a budget or a check leaves
    the process as it found it (the parse's objects are freed with it), so a folder of bad files
    costs no process starts."""

    def __init__(self, boot: str = _BOOT) -> None:
        self._boot = boot
        self._lock = threading.Lock()
        self._cores = _cores()
        self._workers: dict[int, _Worker] = {}  # slot (an index into _cores) -> its live process

    def _start(self, slot: int, request: dict) -> _Worker | None:
        """``request`` sent to the slot's process (a fresh one if it has none, or it left or died)."""
        for _ in range(2):
            worker = self._workers.get(slot)
            if worker is None or worker.proc.poll() is not None:
                if worker is not None:
                    worker.stop()
                worker = self._workers[slot] = _Worker(self._boot, self._cores[slot])
            try:
                worker.send(request)
                return worker
            except OSError:  # it left or died since its last answer: one fresh try
                worker.stop()
                del self._workers[slot]
        return None

    def _finish(self, slot: int, worker: _Worker, result: dict) -> dict:
        if result.pop("retire", False):
            worker.stop()
            self._workers.pop(slot, None)
        return result

    def ask(self, requests: list[dict]) -> list[dict]:
        """Answers in request order, files parsed in parallel (at most one per core), each under
        the limits and its own wall-clock deadline."""
        with self._lock:
            answers: list[dict | None] = [None] * len(requests)
            todo = list(enumerate(requests))
            running: dict[int, tuple[int, int, _Worker, float]] = {}  # stdout fd -> (slot, index, worker, deadline)
            while todo or running:
                busy = {slot for slot, *_ in running.values()}
                for slot in [s for s in range(len(self._cores)) if s not in busy][:len(todo)]:
                    index, request = todo.pop(0)
                    worker = self._start(slot, request)
                    if worker is None:
                        answers[index] = {"status": "error", "message": "the isolated parser did not start",
                                          "crash": True}
                        continue
                    running[worker.proc.stdout.fileno()] = (slot, index, worker,
                                                            time.monotonic() + limit("parser wall s"))
                if not running:
                    continue
                wait = max(0.0, min(d for *_, d in running.values()) - time.monotonic())
                ready = select.select(list(running), [], [], wait)[0]
                for fd, (slot, index, worker, deadline) in list(running.items()):
                    if fd in ready:
                        answers[index] = self._finish(slot, worker, worker.receive())
                    elif time.monotonic() >= deadline:
                        answers[index] = self._finish(slot, worker, worker.failed(timed_out=True))
                    else:
                        continue
                    del running[fd]
            return answers

    def stop(self) -> None:
        with self._lock:
            for worker in self._workers.values():
                worker.stop()
            self._workers.clear()


RETIRE_AFTER = 256  # files one worker parses before a fresh one takes over
RETIRE_RSS_MIB = 256  # a worker whose resident memory stays above this after a file leaves
_POOL = _Pool()


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
    for request, answer in zip(requests, _POOL.ask(requests)):
        key = _identity(request["path"], request["size"], request["kind"])
        if key is not None and not answer.get("crash") and len(_PREFETCHED) < _PREFETCH_MAX:
            _PREFETCHED[key] = answer


def parse_isolated(path: str | os.PathLike, size: int, kind: str) -> dict:
    """Parse ``path`` (``size`` bytes; kind ``torch-zip``, ``pickle`` or ``unknown``) in a limited
    parser process; the answer as described in the module docstring."""
    key = _identity(os.fspath(path), size, kind)
    answer = _PREFETCHED.pop(key, None) if key is not None else None
    return answer if answer is not None else _POOL.ask([{"path": os.fspath(path), "size": size, "kind": kind}])[0]


if __name__ == "__main__":  # pragma: no cover
    serve()
