"""merge_files: streams from disk, equals the in-memory Merger, keeps keys and dtypes, writes
nothing on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merging import merge as merge_module
from merging.errors import MismatchError, NonFiniteError
from merging.io import load_state_dict
from merging.merge import Merger, merge_files
from tests.merging.conftest import make_models


def _write(tmp: Path, pre: dict, fts: list[dict], dtype: torch.dtype, suffix: str = ".safetensors") -> tuple[Path, list[Path]]:
    def save(state: dict, path: Path) -> Path:
        cast = {k: v.to(dtype).contiguous() for k, v in state.items()}
        if suffix == ".safetensors":
            save_file(cast, str(path))
        else:
            torch.save(cast, path)
        return path

    return save(pre, tmp / f"pre{suffix}"), [save(ft, tmp / f"ft{i}{suffix}") for i, ft in enumerate(fts)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("method", "params", "alpha"), [
    ("iso_cts", {"common_fraction": 0.6}, 1.3), ("ties", {"top_k": 30}, 0.7), ("cart", {}, 2.0),
    ("weight_averaging", {}, 5.0),
])
def test_streaming_equals_merger_and_keeps_dtypes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  dtype: torch.dtype, method: str, params: dict, alpha: float) -> None:
    monkeypatch.setenv("ISOSCOPE_STREAM_CHUNK_ELEMENTS", "300")  # several passes over the files
    pre, fts = make_models(3, seed=4)
    p, fs = _write(tmp_path, pre, fts, dtype)
    out = tmp_path / "merged.safetensors"
    merge_files(p, fs, method, out, params=params, alpha=alpha, device="cpu")
    cast = lambda s: {k: v.to(dtype) for k, v in s.items()}  # noqa: E731
    expected = Merger(cast(pre), [cast(f) for f in fts], device="cpu").merged(method, params, alpha=alpha)
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(pre)
        assert f.metadata()["isoscope_method"] == method
        for k in pre:
            got = f.get_tensor(k)
            assert got.dtype == dtype and got.shape == pre[k].shape
            _assert_within_one_rounding(got, expected[k], k)


def _assert_within_one_rounding(got: torch.Tensor, expected: torch.Tensor, key: str) -> None:
    """``got`` is ``expected`` (fp32) stored in ``got``'s dtype: equal after the cast, or off by
    at most one rounding of that dtype (fp32 arithmetic in another order)."""
    want = expected.to(got.dtype).float()
    ulp = torch.finfo(got.dtype).eps * want.abs().clamp_min(torch.finfo(got.dtype).tiny)
    worst = float(((got.float() - want).abs() / ulp).max()) if got.numel() else 0.0
    assert worst <= 1.0, (key, worst)


def test_torch_state_dict_files_and_mixed_dtypes(tmp_path: Path) -> None:
    pre, fts = make_models(2, seed=6)
    pre["blocks.0.ln_1.weight"] = pre["blocks.0.ln_1.weight"].double()
    p, fs = _write(tmp_path, pre, fts, torch.float32, suffix=".pt")
    torch.save(pre, p)  # one float64 tensor in the pretrained file
    out = tmp_path / "m.safetensors"
    merge_files(p, fs, "task_arithmetic", out, alpha=0.5, device="cpu")
    merged = load_state_dict(out)
    assert merged["blocks.0.ln_1.weight"].dtype == torch.float64 and merged["proj"].dtype == torch.float32
    assert torch.allclose(merged["proj"], pre["proj"] + 0.5 * sum(f["proj"] - pre["proj"] for f in fts), atol=1e-6)


def _no_output(tmp_path: Path, out: Path) -> bool:
    return not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".m.")]


def test_nothing_written_on_mismatch(tmp_path: Path) -> None:
    pre, fts = make_models(2)
    bad = dict(fts[1])
    bad["proj"] = torch.zeros(8, 16)
    p, fs = _write(tmp_path, pre, [fts[0], bad], torch.float16)
    out = tmp_path / "m.safetensors"
    with pytest.raises(MismatchError, match=r"ft1.*proj"):
        merge_files(p, fs, "iso_c", out, device="cpu")
    assert _no_output(tmp_path, out)
    missing = {k: v for k, v in fts[0].items() if k != "proj"}
    p, fs = _write(tmp_path, pre, [missing], torch.float16)
    with pytest.raises(MismatchError, match="missing keys: proj"):
        merge_files(p, fs, "iso_c", out, device="cpu")
    assert _no_output(tmp_path, out)


def test_nothing_written_on_nan(tmp_path: Path) -> None:
    pre, fts = make_models(2)
    fts[1]["blocks.0.mlp.c_proj.weight"][0, 0] = float("inf")
    p, fs = _write(tmp_path, pre, fts, torch.float32)
    out = tmp_path / "m.safetensors"
    with pytest.raises(NonFiniteError, match="c_proj"):
        merge_files(p, fs, "ties", out, device="cpu")
    assert _no_output(tmp_path, out)
