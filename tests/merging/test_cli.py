"""The CLI contract: `python -m merging merge|methods|convert`; bad usage or input exits 2
with ONE line on stderr and writes no output file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.cli import main
from merging.registry import all_methods
from tests.merging.conftest import make_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, list[Path]]:
    pre, fts = make_models(3, seed=1)
    save_file({k: v.half() for k, v in pre.items()}, str(tmp_path / "pre.safetensors"))
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file({k: v.half() for k, v in ft.items()}, str(paths[-1]))
    return tmp_path / "pre.safetensors", paths


def _merge_args(pre: Path, fts: list[Path], out: Path, *extra: str) -> list[str]:
    return ["merge", "--pretrained", str(pre), "--finetuned", *map(str, fts), *extra, "--out", str(out)]


def test_merge_subprocess_success_and_failure(files, tmp_path: Path) -> None:
    pre, fts = files
    out = tmp_path / "out.safetensors"
    cmd = [sys.executable, "-m", "merging", *_merge_args(pre, fts, out, "--method", "iso_cts",
                                                          "--param", "common_fraction=0.5", "--alpha", "1.2")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    merged = load_file(str(out))
    assert set(merged) == set(load_file(str(pre))) and all(v.dtype == torch.float16 for v in merged.values())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out2 = tmp_path / "out2.safetensors"
    done = subprocess.run([sys.executable, "-m", "merging", *_merge_args(pre, [bad], out2, "--method", "ties")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out2.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "nope"], "unknown method"),
    (["--method", "iso_cts", "--param", "common_fraction=2"], "outside"),
    (["--method", "iso_cts", "--param", "common_fraction"], "KEY=VALUE"),
    (["--method", "iso_cts", "--param", "top_k=3"], "no parameter"),
    (["--method", "ties", "--param", "top_k=lots"], "not a number"),
    (["--method", "ties", "--alpha", "x"], "invalid float"),
    (["--method", "ties", "--device", "tpu"], "device"),
    (["--method", "ties", "--bogus"], "unrecognized"),
])
def test_bad_usage_exits_2_with_one_line(files, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    pre, fts = files
    out = tmp_path / "o.safetensors"
    assert main(_merge_args(pre, fts, out, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("error:")
    assert not out.exists()


def test_bad_input_exits_2(files, tmp_path: Path, capsys) -> None:
    pre, fts = files
    out = tmp_path / "o.safetensors"
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    for args in (_merge_args(pre, [other], out, "--method", "iso_c"),
                 _merge_args(tmp_path / "missing.safetensors", fts, out, "--method", "iso_c"),
                 _merge_args(pre, fts, pre, "--method", "iso_c"),  # would overwrite an input
                 _merge_args(pre, fts, tmp_path, "--method", "iso_c"),
                 ["merge", "--pretrained", str(pre), "--method", "iso_c", "--out", str(out)],
                 []):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_methods_lists_every_parameter(capsys) -> None:
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for method in all_methods().values():
        assert method.name in text
        for p in method.params:
            assert f"{p.name}=VALUE  default {p.default:g}, range [{p.low:g}, {p.high:g}]" in text and p.help in text


def test_weight_averaging_cli_uses_one_over_t(files, tmp_path: Path) -> None:
    pre, fts = files
    out = tmp_path / "wa.safetensors"
    assert main(_merge_args(pre, fts, out, "--method", "weight_averaging", "--alpha", "7")) == 0
    merged = load_file(str(out))
    mean = sum(load_file(str(f))["proj"].float() for f in fts) / len(fts)
    assert torch.allclose(merged["proj"].float(), mean, atol=2e-3)


def test_convert_subcommand(tmp_path: Path, capsys) -> None:
    src = tmp_path / "w.pt"
    torch.save({"a": torch.arange(4.0)}, src)
    dst = tmp_path / "w.safetensors"
    assert main(["convert", str(src), "--out", str(dst)]) == 0
    assert torch.equal(load_file(str(dst))["a"], torch.arange(4.0))
