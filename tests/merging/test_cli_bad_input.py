"""The CLI contract on bad usage and bad input, run as a real subprocess:
`python -m merging merge --pretrained P --finetuned F1 [F2 ...] --method NAME [--param KEY=VALUE ...]
[--alpha A] [--device cpu|cuda] [--trust-pickle] --out OUT.safetensors`
must exit 2 with ONE readable line on stderr, no traceback, and no output file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from merging.io import save_safetensors
from tests.merging.test_io import write_torch_zip_with_numel
from tests.merging.test_io_hostile import Reduce

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "merging" / "__main__.py").exists(), reason="merging CLI not built yet"),
]


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "merging", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _state(seed: int, **overrides: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {"blocks.0.attn.in_proj_weight": torch.randn(12, 4, generator=g),
             "blocks.0.mlp.c_fc.weight": torch.randn(6, 4, generator=g),
             "blocks.0.ln_1.bias": torch.randn(4, generator=g)}
    state.update(overrides)
    return state


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("base", "ft1", "ft2")}
    for seed, path in enumerate(paths.values()):
        save_safetensors(_state(seed), path)
    return paths


def _merge_args(files: dict[str, Path], out: Path, *finetuned: Path, method: str = "task_arithmetic") -> list:
    return ["merge", "--pretrained", files["base"], "--finetuned", *(finetuned or (files["ft1"], files["ft2"])),
            "--method", method, "--device", "cpu", "--out", out]


def test_a_valid_merge_succeeds(tmp_path: Path, files: dict[str, Path]) -> None:
    """Control: the harness can see success (exit 0, output written)."""
    out = tmp_path / "merged.safetensors"
    result = run_cli(*_merge_args(files, out), "--alpha", "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.exists()


def _write(tmp_path: Path, name: str, builder: Callable[[Path], object]) -> Path:
    path = tmp_path / name
    builder(path)
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda d: d / "nope.safetensors", "nope.safetensors"),
    "folder": (lambda d: _write(d, "dir.safetensors", lambda p: p.mkdir()), "dir.safetensors"),
    "empty": (lambda d: _write(d, "empty.safetensors", lambda p: p.write_bytes(b"")), "empty.safetensors"),
    "random bytes": (lambda d: _write(d, "rand.pt", lambda p: p.write_bytes(os.urandom(512))), "rand.pt"),
    "truncated": (lambda d: _write(d, "cut.safetensors", lambda p: p.write_bytes(
        (d / "ft1.safetensors").read_bytes()[:150])), "cut.safetensors"),
    "absurd header": (lambda d: _write(d, "huge.safetensors", lambda p: p.write_bytes(
        b"\x50\x00\x00\x00\x00\x00\x00\x00" + b'{"w":{"dtype":"F32","shape":[1000000000000000],'
        b'"data_offsets":[0,4000000000000000]}}'.ljust(80) + b"\0" * 4)), "huge.safetensors"),
    "huge torch storage": (lambda d: write_torch_zip_with_numel(d / "huge.pt", 10**12), "huge.pt"),
    "foreign pickle": (lambda d: _write(d, "list.pt", lambda p: torch.save([1, 2, 3], p)), "list.pt"),
    "mismatched keys": (lambda d: _write(d, "keys.safetensors", lambda p: save_safetensors(
        {**_state(5), "extra.weight": torch.ones(2)}, p)), "extra.weight"),
    "mismatched shapes": (lambda d: _write(d, "shape.safetensors", lambda p: save_safetensors(
        _state(5, **{"blocks.0.mlp.c_fc.weight": torch.ones(7, 4)}), p)), "blocks.0.mlp.c_fc.weight"),
    "NaN weights": (lambda d: _write(d, "nan.safetensors", lambda p: save_safetensors(
        _state(5, **{"blocks.0.ln_1.bias": torch.tensor([0.0, float("nan"), 1.0, 2.0])}), p)), "blocks.0.ln_1.bias"),
    "Inf weights": (lambda d: _write(d, "inf.pt", lambda p: torch.save(
        _state(5, **{"blocks.0.attn.in_proj_weight": torch.full((12, 4), float("inf"))}), p)),
        "blocks.0.attn.in_proj_weight"),
}


def assert_clean_refusal(result: subprocess.CompletedProcess, out: Path, words: str = "") -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert words in lines[0], lines[0]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "an output file was written"


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_finetuned_file(tmp_path: Path, files: dict[str, Path], case: str) -> None:
    build, words = BAD_FILES[case]
    out = tmp_path / "out" / "merged.safetensors"
    result = run_cli(*_merge_args(files, out, files["ft1"], build(tmp_path)), cwd=tmp_path)
    assert_clean_refusal(result, out, words)


def test_bad_pretrained_file(tmp_path: Path, files: dict[str, Path]) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{not json}      ")
    out = tmp_path / "merged.safetensors"
    result = run_cli(*_merge_args({**files, "base": tmp_path / "bad.safetensors"}, out), cwd=tmp_path)
    assert_clean_refusal(result, out, "bad.safetensors")


def test_hostile_pickle_is_refused_and_does_not_run(tmp_path: Path, files: dict[str, Path]) -> None:
    marker = tmp_path / "MARKER"
    hostile = tmp_path / "finetuned.pt"
    torch.save({"w": torch.ones(2), "x": Reduce(os.system, (f"touch {marker}",))}, hostile)
    out = tmp_path / "merged.safetensors"
    result = run_cli(*_merge_args(files, out, files["ft1"], hostile), cwd=tmp_path)
    assert_clean_refusal(result, out, "--trust-pickle")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["tuple DAG key (2**64 hash steps)", "stride-0 view 2**13 x 2**13 of one element"])
def test_files_that_hang_or_blow_up_a_naive_reader_exit_2_in_one_line(tmp_path: Path, files: dict[str, Path],
                                                                       case: str) -> None:
    """The audit's CLI cases: the DAG key never returned; a merge of two stride-0 files wrote 64 MiB."""
    from tests.merging.hostile_corpus import CORPUS

    name, build, words = CORPUS[case]
    hostile = tmp_path / name
    hostile.write_bytes(build())
    out = tmp_path / "merged.safetensors"
    result = run_cli(*_merge_args(files, out, hostile, hostile), cwd=tmp_path)
    assert_clean_refusal(result, out, words)
    assert str(hostile) in result.stderr




def test_whole_module_pickle_is_read_without_trust(tmp_path: Path, files: dict[str, Path]) -> None:
    module = torch.nn.Module()
    for i, (key, value) in enumerate(_state(7).items()):
        module.register_parameter(f"p{i}", torch.nn.Parameter(value))
    pickled = tmp_path / "ft_module.pt"
    torch.save(module, pickled)
    out = tmp_path / "merged.safetensors"
    # read by the code-free reader, no trust needed: its keys (p0..p2) do not match the base, a clean error
    assert_clean_refusal(run_cli(*_merge_args(files, out, pickled), cwd=tmp_path), out, "p0")


@pytest.mark.parametrize(("extra", "words"), [
    ([], ""),  # no arguments at all
    (["merge", "--pretrained", "x"], ""),
    (["--method", "no_such_method"], "no_such_method"),
    (["--param", "top_k"], "top_k"),
    (["--method", "ties", "--param", "top_k=500"], "top_k"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_usage(tmp_path: Path, files: dict[str, Path], extra: list[str], words: str) -> None:
    out = tmp_path / "merged.safetensors"
    if not extra or extra[0] == "merge":
        args = extra
    else:
        args = [*_merge_args(files, out), *extra]
    assert_clean_refusal(run_cli(*args, cwd=tmp_path), out, words)


def test_convert_refuses_uninterpretable_pickles_without_trust_and_converts_with_it(tmp_path: Path) -> None:
    torch.save({"w": Reduce(torch.ones, (3,))}, tmp_path / "m.pt")  # only running code makes the tensor
    out = tmp_path / "m.safetensors"
    assert_clean_refusal(run_cli("convert", tmp_path / "m.pt", "--out", out, cwd=tmp_path), out, "--trust-pickle")
    result = run_cli("convert", tmp_path / "m.pt", "--out", out, "--trust-pickle", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from merging.io import load_state_dict

    assert torch.equal(load_state_dict(out)["w"], torch.ones(3))  # no trust needed any more
