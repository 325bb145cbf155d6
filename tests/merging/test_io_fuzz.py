"""Loader fuzzing: random bytes, truncations at every offset of valid files, corrupted and
hand-built safetensors headers, torch files declaring huge storages, non-dict payloads.

Every input must end either in a CheckpointError whose one-line message starts with the file's
path, or (for mutations that leave a valid file) in a successful load; never another exception,
a crash or a large allocation (the peak resident memory of each test's inputs is measured from
a reset high-water mark, so it does not depend on what ran before).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import resource
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merging.errors import CheckpointError
from merging.io import ST_DTYPES, open_checkpoint
from tests.merging.test_io import (
    safetensors_bytes,
    sample_state,
    write_all_formats,
    write_torch_legacy_with_numel,
    write_torch_zip_with_numel,
)

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_RSS_GROWTH_MB = 150
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    return {fmt: path.read_bytes() for fmt, path in write_all_formats(folder, sample_state()).items()}


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """ISOSCOPE_FUZZ_REPORT=file.json writes how many inputs each test tried (for the README)."""
    yield
    if os.environ.get("ISOSCOPE_FUZZ_REPORT"):
        Path(os.environ["ISOSCOPE_FUZZ_REPORT"]).write_text(json.dumps(COUNTS, indent=1))


STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", STATUS.read_text()).group(1)) / 1024


def _peak_since_reset() -> Iterator[float]:
    """Linux: reset this process's resident high-water mark (VmHWM) to its current RSS, then
    report how far the peak rose above that. Elsewhere: the growth of ru_maxrss, which only
    sees peaks above every earlier one."""
    if CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")
        start = _status_mb("VmRSS")
        yield 0.0
        yield _status_mb("VmHWM") - start
    else:  # pragma: no cover - not Linux
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        yield 0.0
        yield resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


@contextmanager
def _bounded_memory() -> Iterator[None]:
    peak = _peak_since_reset()
    next(peak)
    yield
    grown = next(peak)
    assert grown < MAX_RSS_GROWTH_MB, f"peak RSS grew by {grown:.0f} MB: a hostile size was allocated"


def test_memory_guard_sees_an_allocation_below_an_earlier_peak() -> None:
    """The guard measures the allocation inside it, whatever ran before: after a 400 MB peak,
    a 200 MB allocation still trips it, and nothing does not."""
    big = torch.ones(100 * 2 ** 20)  # 400 MB, touched
    del big
    with _bounded_memory():
        pass
    with pytest.raises(AssertionError, match="peak RSS grew"):
        with _bounded_memory():
            held = torch.ones(50 * 2 ** 20)  # 200 MB
            del held


def check_clean(path: Path, must_fail: bool, tag: str) -> None:
    """Open and fully read ``path``: CheckpointError naming the file, or (if allowed) success."""
    COUNTS[tag] = COUNTS.get(tag, 0) + 1
    try:
        state = open_checkpoint(path).load()
    except CheckpointError as err:
        message = str(err)
        assert message.startswith(str(path)), message
        assert "\n" not in message and message.isprintable(), message
        return
    assert not must_fail, f"{path} loaded although it is broken"
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".safetensors", ".pt", ".bin", ""]))
def test_random_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    with _bounded_memory():
        check_clean(_write(tmp_path, f"random{suffix}", data), must_fail=True, tag="random bytes")


@FUZZ
@given(data=st.binary(min_size=1, max_size=2048), prefix=st.sampled_from([b"\x80\x02", b"PK\x03\x04", b"{", b"\x80\x05"]))
def test_random_bytes_behind_real_magic_numbers(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    payload = struct.pack("<Q", len(prefix + data)) + prefix + data if prefix == b"{" else prefix + data
    with _bounded_memory():
        check_clean(_write(tmp_path, "magic.pt", payload), must_fail=True, tag="random bytes behind magic")


def _cut_points(fmt: str, size: int) -> list[int]:
    """Every offset; for zip files every third one plus every offset of the trailing directory."""
    if fmt != "torch-zip":
        return list(range(size))
    return sorted(set(range(0, size, 3)) | set(range(max(0, size - 300), size)))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "torch-zip", "legacy"])
def test_truncation_at_every_offset(tmp_path: Path, valid_files: dict[str, bytes], fmt: str) -> None:
    data = valid_files[fmt]
    with _bounded_memory():
        for cut in _cut_points(fmt, len(data)):
            check_clean(_write(tmp_path, "cut.pt", data[:cut]), must_fail=True, tag=f"truncated {fmt}")


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       fmt=st.sampled_from(["safetensors", "torch-zip", "legacy"]), header_only=st.booleans())
def test_byte_mutations(tmp_path: Path, valid_files: dict[str, bytes], edits: list[tuple[int, int]],
                        fmt: str, header_only: bool) -> None:
    data = bytearray(valid_files[fmt])
    span = 8 + int.from_bytes(data[:8], "little") if fmt == "safetensors" and header_only else len(data)
    for position, value in edits:
        data[position % span] = value
    with _bounded_memory():
        check_clean(_write(tmp_path, "mutated.pt", bytes(data)), must_fail=False, tag=f"mutated {fmt}")


DTYPE_NAMES = [*ST_DTYPES, "F128", "Q4", "", "f32", "COMPLEX"]
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPE_NAMES),
    "shape": st.lists(st.one_of(st.integers(0, 8), st.integers(0, 10**15), st.integers(-5, -1)), max_size=4),
    "data_offsets": st.lists(st.one_of(st.integers(0, 64), st.integers(0, 2**64)), min_size=1, max_size=3),
})


@FUZZ
@given(entries=st.dictionaries(st.text(max_size=8), ENTRY, max_size=4), data_len=st.integers(0, 128),
       duplicate=st.booleans())
def test_generated_safetensors_headers(tmp_path: Path, entries: dict, data_len: int, duplicate: bool) -> None:
    raw = json.dumps(entries).encode()
    if duplicate and entries:  # repeat the first entry under the same key
        key, value = next(iter(entries.items()))
        raw = raw[:-1] + b", " + json.dumps({key: value}).encode()[1:]
    path = _write(tmp_path, "gen.safetensors", safetensors_bytes(raw, b"\x01" * data_len))
    with _bounded_memory():
        check_clean(path, must_fail=duplicate and bool(entries), tag="generated headers")


@FUZZ
@given(numel=st.one_of(st.integers(0, 4), st.integers(5, 10**18)), legacy=st.booleans())
def test_torch_files_declaring_any_storage_size(tmp_path: Path, numel: int, legacy: bool) -> None:
    writer = write_torch_legacy_with_numel if legacy else write_torch_zip_with_numel
    with _bounded_memory():
        check_clean(writer(tmp_path / "sized.pt", numel), must_fail=numel > 1, tag="declared storage sizes")


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                       max_leaves=8)


@FUZZ
@given(payload=JSONISH, zip_format=st.booleans())
def test_non_state_dict_payloads(tmp_path: Path, payload: object, zip_format: bool) -> None:
    path = tmp_path / "payload.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    check_clean(path, must_fail=True, tag="non-dict payloads")


# ---- pickle opcode streams (run through the isolated parser, under the app's limits)

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
LONG_RUN = int(os.environ.get("ISOSCOPE_FUZZ_LONG", "0"))  # e.g. 5000: a long opt-in run of the slow fuzzers
OPCODE_FUZZ = settings(FUZZ, max_examples=300)
LONG_FUZZ = settings(FUZZ, max_examples=max(LONG_RUN, 150))
OPCODES = [bytes([c]) for c in sorted(pickle._Unpickler.dispatch) if bytes([c]) not in (pickle.STOP,)]  # noqa: SLF001
ARGS = st.sampled_from([b"", b"\x00", b"\x01", b"\xff\xff\xff\x7f", b"\x08\x00\x00\x00abcdefgh", b"torch\nSize\n",
                        b"collections\nOrderedDict\n", b"999999999\n", b"\x05\x00\x00\x00storage"])


@pytest.fixture(scope="module")
def replica_pickle() -> bytes:
    """data.pkl of a real torch.save(module) (a replica's shape: records, BUILD state, storages)."""
    buf = io.BytesIO()
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))


def _keep(path: Path) -> None:
    """A failing input is copied into fuzz_regressions/ (replayed by test_regressions_stay_fixed)."""
    REGRESSIONS.mkdir(exist_ok=True)
    (REGRESSIONS / f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}{path.suffix}").write_bytes(path.read_bytes())


def check_isolated(path: Path, tag: str) -> None:
    """check_clean, plus: no raw exception reached the error boundary ("unexpected"); failures kept."""
    try:
        check_clean(path, must_fail=False, tag=tag)
    except AssertionError:
        _keep(path)
        raise
    try:
        open_checkpoint(path)
    except CheckpointError as err:
        if "unexpected" in str(err) or "isolated parser" in str(err):
            _keep(path)
            raise AssertionError(f"{path.name}: {err}") from err


def _zip_with(data_pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/data/0", b"\0" * 64)
    return buf.getvalue()


@OPCODE_FUZZ
@given(ops=st.lists(st.tuples(st.sampled_from(OPCODES), ARGS), max_size=40), zipped=st.booleans())
def test_random_opcode_streams(tmp_path: Path, ops: list[tuple[bytes, bytes]], zipped: bool) -> None:
    data = b"\x80\x02" + b"".join(op + arg for op, arg in ops) + pickle.STOP
    path = _write(tmp_path, "ops.pt", _zip_with(data) if zipped else data)
    with _bounded_memory():
        check_isolated(path, "random opcode streams")


@OPCODE_FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(OPCODES + [b"\x00", b"\xff"])), min_size=1,
                      max_size=4), insert=st.booleans())
def test_mutated_replica_pickles(tmp_path: Path, replica_pickle: bytes, edits: list, insert: bool) -> None:
    data = bytearray(replica_pickle)
    for position, op in edits:
        at = position % len(data)
        data[at:at + (0 if insert else 1)] = op
    with _bounded_memory():
        check_isolated(_write(tmp_path, "mutated.pt", _zip_with(bytes(data))), "mutated replica pickles")


@pytest.mark.slow
@LONG_FUZZ
@given(ops=st.lists(st.tuples(st.sampled_from(OPCODES), ARGS), max_size=200))
def test_long_opcode_streams(tmp_path: Path, ops: list[tuple[bytes, bytes]]) -> None:
    data = b"\x80\x04" + b"".join(op + arg for op, arg in ops) + pickle.STOP
    check_isolated(_write(tmp_path, "long.pt", _zip_with(data)), "long opcode streams")


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*")) if REGRESSIONS.is_dir() else [], ids=lambda p: p.name)
def test_regressions_stay_fixed(path: Path) -> None:
    if path.suffix in (".pt", ".bin", ".safetensors"):
        check_isolated(path, "regressions")
