"""merging.io: reading every supported format lazily, refusing what is not safe, atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import merging.io as mio
from merging.errors import CheckpointError, UntrustedPickleError
from merging.io import convert_to_safetensors, load_state_dict, open_checkpoint, save_safetensors


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "visual.conv1.weight": torch.randn(4, 3, 2, 2, generator=g),
        "visual.proj": torch.randn(6, 5, generator=g),
        "visual.ln.bias": torch.randn(6, generator=g).to(torch.float16),
        "visual.half": torch.randn(3, 3, generator=g).to(torch.bfloat16),
        "visual.steps": torch.arange(7),
        "visual.empty": torch.zeros(0, 3),
    }


def write_all_formats(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The same state dict as safetensors, torch zip and torch legacy files."""
    paths = {"safetensors": folder / "s.safetensors", "torch-zip": folder / "z.pt", "legacy": folder / "l.pt"}
    save_safetensors(state, paths["safetensors"])
    torch.save(state, paths["torch-zip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def safetensors_bytes(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors file from a raw header object (any JSON), for hand-made corrupt files."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


@pytest.mark.parametrize("fmt", ["safetensors", "torch-zip", "legacy"])
def test_every_format_reads_back_exactly_with_shapes_and_dtypes(tmp_path: Path, fmt: str) -> None:
    state = sample_state()
    ckpt = open_checkpoint(write_all_formats(tmp_path, state)[fmt])
    assert ckpt.format == fmt
    assert sorted(ckpt) == sorted(state) and len(ckpt) == len(state)
    for key, value in state.items():
        assert ckpt.shape(key) == tuple(value.shape)
        assert ckpt.dtype(key) == value.dtype
        assert torch.equal(ckpt[key], value) and ckpt[key].dtype == value.dtype
    assert ckpt.get("missing") is None and "missing" not in ckpt
    assert all(torch.equal(v, state[k]) for k, v in load_state_dict(ckpt.path).items())


def test_safetensors_shape_and_dtype_come_from_the_header_without_reading_tensors(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    path = write_all_formats(tmp_path, sample_state())["safetensors"]
    ckpt = open_checkpoint(path)
    monkeypatch.setattr(ckpt, "_read", lambda key: pytest.fail(f"read {key}"))
    assert ckpt.shape("visual.proj") == (6, 5) and ckpt.dtype("visual.half") == torch.bfloat16


def test_format_is_sniffed_from_content_not_suffix(tmp_path: Path) -> None:
    paths = write_all_formats(tmp_path, sample_state())
    renamed = paths["safetensors"].rename(tmp_path / "weights.bin")
    assert open_checkpoint(renamed).format == "safetensors"
    assert open_checkpoint(paths["torch-zip"].rename(tmp_path / "z.safetensors")).format == "torch-zip"


def test_state_dict_wrapper_is_unwrapped_without_trust(tmp_path: Path) -> None:
    state = sample_state()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    assert sorted(load_state_dict(tmp_path / "wrapped.pt")) == sorted(state)


class TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def make_tiny(seed: int) -> TinyEncoder:
    torch.manual_seed(seed)
    return TinyEncoder()


class SelfBuilding(TinyEncoder):
    """A module that pickles as a call of ``make_tiny``: only running code rebuilds it."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def __reduce__(self) -> tuple:
        return (make_tiny, (self.seed,))


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_module_pickle_opens_without_trust_and_without_running_code(tmp_path: Path, legacy: bool) -> None:
    model = TinyEncoder()
    path = tmp_path / "finetuned.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    ckpt = open_checkpoint(path)  # no trust: the code-free reader interprets the module
    assert ckpt.format == ("legacy" if legacy else "torch-zip")
    assert list(ckpt) == list(model.state_dict())
    assert all(torch.equal(ckpt[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("legacy", [False, True])
def test_uninterpretable_pickle_is_refused_then_loads_with_trust(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "finetuned.pt"
    torch.save(SelfBuilding(3), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UntrustedPickleError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "execute code" in message and "--trust-pickle" in message
    assert "make_tiny" in message and "cannot interpret" in message and "\n" not in message
    loaded = load_state_dict(path, trust_pickle=True)
    assert all(torch.equal(loaded[k], v) for k, v in make_tiny(3).state_dict().items())


def test_conversion_makes_a_file_that_needs_no_trust(tmp_path: Path) -> None:
    model = SelfBuilding(1)
    torch.save(model, tmp_path / "m.pt")
    with pytest.raises(UntrustedPickleError):
        convert_to_safetensors(tmp_path / "m.pt", tmp_path / "m.safetensors", trust_pickle=False)
    assert not (tmp_path / "m.safetensors").exists()
    out = convert_to_safetensors(tmp_path / "m.pt", tmp_path / "m.safetensors", trust_pickle=True)
    converted = open_checkpoint(out)
    assert converted.format == "safetensors"
    assert all(torch.equal(converted[k], v) for k, v in make_tiny(1).state_dict().items())


@pytest.mark.parametrize("payload", [[1, 2], 5, "text", torch.ones(3), {"a": 1}, {"a": torch.ones(1), "b": [1]},
                                     {}, OrderedDict(), {3: torch.ones(1)}])
def test_torch_files_that_are_not_state_dicts_are_errors(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=str(path)) as info:
        open_checkpoint(path)
    assert not isinstance(info.value, UntrustedPickleError)


def test_folders_empty_missing_special_and_unreadable_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases = {tmp_path: "is a folder", tmp_path / "empty.safetensors": "is empty",
             tmp_path / "nope.pt": "no such file", Path("/dev/null"): "not a regular file"}
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=words):
            open_checkpoint(path)
    good = write_all_formats(tmp_path, sample_state())["safetensors"]

    def denied(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mio, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match=f"{good}: permission denied"):
        open_checkpoint(good)


def test_plain_and_old_protocol_pickles_without_code_are_foreign(tmp_path: Path) -> None:
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.pt"
        path.write_bytes(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=protocol))
        with pytest.raises(CheckpointError, match="plain Python pickle"):
            open_checkpoint(path)


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "merged.safetensors"
    save_safetensors({"a": torch.ones(2)}, target)

    calls = []

    def broken(tensor: torch.Tensor) -> memoryview:
        calls.append(tensor)
        if len(calls) == 2:  # the header and one tensor are already on disk
            raise OSError("disk full")
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())

    monkeypatch.setattr(mio, "_tensor_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"a": torch.zeros(2), "b": torch.zeros(3)}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged.safetensors"]
    assert torch.equal(load_state_dict(target)["a"], torch.ones(2))


def test_saved_files_get_the_umask_mode_not_the_temp_files_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        save_safetensors({"a": torch.ones(1)}, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640


def test_save_handles_tied_and_view_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0)
    state = {"w": base.view(3, 4), "tied": base.view(3, 4), "slice": base[4:8], "t": base.view(3, 4).t()}
    save_safetensors(state, tmp_path / "tied.safetensors", metadata={"note": "x"})
    back = load_state_dict(tmp_path / "tied.safetensors")
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert base.untyped_storage().data_ptr() == state["w"].untyped_storage().data_ptr()  # inputs untouched


def test_safetensors_header_validation_accepts_valid_edge_cases(tmp_path: Path) -> None:
    header = {"__metadata__": {"k": "v"}, "z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
              "b": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}}
    path = tmp_path / "edge.safetensors"
    path.write_bytes(safetensors_bytes(header, b"\x01\x02\x03"))
    infos = mio.read_safetensors_header(path)
    assert infos["z"].shape == (0, 4) and infos["b"].dtype == torch.uint8
    assert torch.equal(open_checkpoint(path)["b"], torch.tensor([1, 2, 3], dtype=torch.uint8))


@pytest.mark.parametrize(("header", "data", "words"), [
    ({"a": {"dtype": "F32", "shape": [10**15], "data_offsets": [0, 4 * 10**15]}}, b"\0" * 4, "outside the file"),
    ({"a": {"dtype": "F32", "shape": [10**15], "data_offsets": [0, 4]}}, b"\0" * 4, "declares"),
    ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
     b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"\0", "duplicate key"),
    ([1, 2, 3], b"", "not a JSON object"),
    ("text", b"", "not a JSON object"),
    ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
      "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"\0" * 3, "overlaps"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\0" * 2, "gap"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0" * 5, "cover 1 of the 5"),
    ({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0", "invalid shape"),
    ({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0", "invalid shape"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1]}}, b"\0", "invalid data_offsets"),
    ({"a": {"dtype": "U8", "shape": [1]}}, b"\0", "lacks"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    (b"\xff\xfe{}", b"", "corrupted safetensors header"),
    (b"[" * 100000 + b"]" * 100000, b"", "corrupted safetensors header"),
])
def test_corrupt_safetensors_headers_are_named_errors(tmp_path: Path, header: object, data: bytes,
                                                      words: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(CheckpointError, match=words) as info:
        open_checkpoint(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("header_len", [2**64 - 1, 2**40, 10**9, 60])
def test_absurd_header_lengths_are_errors(tmp_path: Path, header_len: int) -> None:
    path = tmp_path / "len.safetensors"
    path.write_bytes(safetensors_bytes({}, b"", header_len=header_len))
    with pytest.raises(CheckpointError, match="header length"):
        open_checkpoint(path)


def test_no_tensors_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    path.write_bytes(safetensors_bytes({"__metadata__": {}}))
    with pytest.raises(CheckpointError, match="holds no tensors"):
        open_checkpoint(path)


def test_messages_never_carry_control_characters_from_the_file(tmp_path: Path) -> None:
    evil_key = "a\n\rTraceback (most recent call last):\x1b[31m"
    path = tmp_path / "k.safetensors"
    path.write_bytes(safetensors_bytes({evil_key: {"dtype": "XX", "shape": [1], "data_offsets": [0, 1]}}, b"\0"))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    assert str(info.value).isprintable()


def test_storage_declaring_more_than_the_file_holds_is_refused_before_allocation(tmp_path: Path) -> None:
    for path in (write_torch_zip_with_numel(tmp_path / "big.pt", 10**12),
                 write_torch_legacy_with_numel(tmp_path / "big_legacy.pt", 10**12)):
        with pytest.raises(CheckpointError, match="declares 4000000000000 bytes"):
            open_checkpoint(path)


# ---- hand-made torch files declaring an arbitrary storage size (also used by the fuzz tests)


class _StorageMarker:
    pass


class _RebuildTensor:
    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self) -> tuple:
        return (torch._utils._rebuild_tensor_v2, (_StorageMarker(), 0, (self.numel,), (1,), False, OrderedDict()))


class _PidPickler(pickle.Pickler):
    def __init__(self, file: object, pid: tuple) -> None:
        super().__init__(file, protocol=2)
        self.pid = pid

    def persistent_id(self, obj: object) -> tuple | None:
        return self.pid if isinstance(obj, _StorageMarker) else None


def _pickled(obj: object, pid: tuple) -> bytes:
    import io

    buf = io.BytesIO()
    _PidPickler(buf, pid).dump(obj)
    return buf.getvalue()


def write_torch_zip_with_numel(path: Path, numel: int) -> Path:
    import zipfile

    data = _pickled({"w": _RebuildTensor(numel)}, ("storage", torch.FloatStorage, "0", "cpu", numel))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", b"\0" * 4)
        zf.writestr("archive/version", "3\n")
    return path


def write_torch_legacy_with_numel(path: Path, numel: int) -> Path:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(mio.TORCH_LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(sys_info, protocol=2),
             _pickled({"w": _RebuildTensor(numel)}, ("storage", torch.FloatStorage, "0", "cpu", numel, None)),
             pickle.dumps(["0"], protocol=2), struct.pack("<q", numel), b"\0" * 4]
    path.write_bytes(b"".join(parts))
    return path


def test_hand_made_files_with_honest_sizes_do_load(tmp_path: Path) -> None:
    """The builders above produce loadable files when the size is honest (so the refusals are real)."""
    assert open_checkpoint(write_torch_zip_with_numel(tmp_path / "ok.pt", 1))["w"].shape == (1,)
    assert open_checkpoint(write_torch_legacy_with_numel(tmp_path / "ok_l.pt", 1))["w"].shape == (1,)



def test_mismatches_are_named_from_headers_without_reading_tensors(tmp_path: Path, monkeypatch) -> None:
    from merging.errors import MismatchError
    from merging.tensors import check_compatible

    base = {f"k{i}": torch.zeros(2, 3) for i in range(5)} | {"steps": torch.zeros(4)}
    other = {f"k{i}": torch.zeros(3, 2) for i in range(5)} | {"steps": torch.arange(4), "extra": torch.ones(1)}
    save_safetensors(base, tmp_path / "a.safetensors")
    save_safetensors(other, tmp_path / "b.safetensors")
    a, b = open_checkpoint(tmp_path / "a.safetensors"), open_checkpoint(tmp_path / "b.safetensors")
    for ckpt in (a, b):
        monkeypatch.setattr(ckpt, "_read", lambda key: pytest.fail(f"read {key}"))
    with pytest.raises(MismatchError) as info:
        check_compatible(a, b, "fine-tuned model 1")
    message = str(info.value)
    assert "unexpected keys: extra" in message and "float vs integer dtype: steps" in message
    assert message.count("(2, 3) vs (3, 2)") == 3 and "fine-tuned model 1" in message
    check_compatible(a, {k: v.half() if v.is_floating_point() else v for k, v in base.items()}, "fp16 twin")


def test_streaming_writer_round_trips_through_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    state = {"h": torch.randn(3, 4).half(), "b": torch.randn(5).bfloat16(), "scalar": torch.tensor(2.5),
             "empty": torch.zeros(0, 3), "mask": torch.tensor([True, False, True]), "i": torch.arange(7)}
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}
    path = tmp_path / "s.safetensors"
    with mio.safetensors_writer(path, layout, {"note": "streamed"}) as write:
        for key, value in state.items():
            write(key, value.float() if value.is_floating_point() else value)  # cast back to the layout's dtype
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"note": "streamed"}
        for key, value in state.items():
            assert f.get_tensor(key).dtype == value.dtype and torch.equal(f.get_tensor(key), value), key
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0  # data starts 8-byte aligned


@pytest.mark.parametrize("mistake", ["order", "shape", "missing", "extra"])
def test_streaming_writer_refuses_mistakes_and_leaves_nothing(tmp_path: Path, mistake: str) -> None:
    layout = {"a": (torch.float32, (2,)), "b": (torch.float32, (3,))}
    writes = {"order": [("b", torch.zeros(3))], "shape": [("a", torch.zeros(3))],
              "missing": [("a", torch.zeros(2))],
              "extra": [("a", torch.zeros(2)), ("b", torch.zeros(3)), ("c", torch.zeros(1))]}[mistake]
    with pytest.raises(CheckpointError, match="expected|never written"):
        with mio.safetensors_writer(tmp_path / "x.safetensors", layout) as write:
            for key, value in writes:
                write(key, value)
    assert list(tmp_path.iterdir()) == []


def test_a_128_byte_safetensors_header_is_not_taken_for_a_pickle(tmp_path: Path) -> None:
    """The header length's first byte is 0x80 — the pickle protocol marker — at exactly 128."""
    key = "k" * 10
    for pad in range(0, 80):
        path = tmp_path / f"p{pad}.bin"  # no .safetensors suffix: content alone decides
        save_safetensors({key + "x" * pad: torch.zeros(2)}, path)
        if path.read_bytes()[0] == 0x80:
            assert torch.equal(load_state_dict(path)[key + "x" * pad], torch.zeros(2))
            return
    pytest.fail("no 128-byte header produced")
