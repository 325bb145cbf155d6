"""The method contract, checked on any registered method (in the spirit of scikit-learn's
``check_estimator``): ``check_method(name)`` runs every check below and raises AssertionError
naming the first broken one. ``tests/merging/test_conformance.py`` runs it over the registry, so
a new method gets it for free (docs/adding_a_method.md).

The checks, each on tiny tall, wide and square matrices plus 1-D and 4-D parameters:
- ``shapes_and_dtype``: Δ has θ0's keys and shapes, float32, finite;
- ``base``: θ0, or θ0 + mean(τt) for a method that merges around the average;
- ``alpha``: θ = base + α·Δ for every α, and a fixed α (weight averaging's 1/T) wins;
- ``one_layer``: one key merged alone (``Merger.layer_update``) equals that key of the
  whole-model merge, bit for bit;
- ``streaming``: the streaming file merge (``merge_files``) equals the in-memory merge;
- ``views``: the spectrum the views draw (``Decompositions.merged_spectrum`` and
  ``merged_layer``) equals an SVD of the engine's actual update θ − θ0, and so does each route
  the method declares: ``sum_basis``, ``spectrum`` and ``factors`` (whose left vectors must be
  orthonormal and span ΔM's column space).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from analysis.decompositions import Decompositions
from merging.linalg import singular_values
from merging.merge import Merger, merge_files
from merging.registry import Method, get_method
from tests.merging.conftest import make_models

NUM_TASKS = 3
ALPHAS = (0.3, 1.0, 2.5)
SPECTRUM_RTOL = 2e-4  # float32 engines against a float64 SVD, relative to σ1


def variants(method: Method) -> list[dict[str, float]]:
    """The defaults, and for a swept parameter one more value away from them."""
    out = [method.defaults()]
    swept = method.swept()
    if swept is not None:
        other = min(swept.sweep, key=lambda v: (abs(v - 0.5), v))
        out.append({**method.defaults(), swept.name: other})
    return out


def _models() -> tuple[dict, list[dict]]:
    return make_models(NUM_TASKS, seed=21)


def check_shapes_and_dtype(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    delta = Merger(pre, fts).update(method.name, params).delta
    assert list(delta) == list(pre), "Δ must have θ0's keys, in order"
    for key, d in delta.items():
        assert d.shape == pre[key].shape, f"{key}: Δ {tuple(d.shape)} for θ0 {tuple(pre[key].shape)}"
        assert d.dtype == torch.float32, f"{key}: Δ is {d.dtype}"
        assert bool(torch.isfinite(d).all()), f"{key}: Δ is not finite"


def check_base(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    base = Merger(pre, fts).update(method.name, params).base
    for key, b in base.items():
        want = pre[key].double()
        if method.base == "average":
            want = want + sum(ft[key].double() - pre[key].double() for ft in fts) / NUM_TASKS
        np.testing.assert_allclose(b.double().numpy(), want.numpy(), rtol=0, atol=1e-6, err_msg=f"base of {key}")


def check_alpha(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    merger = Merger(pre, fts)
    update = merger.update(method.name, params)
    fixed = method.alpha_for(NUM_TASKS)
    for alpha in ALPHAS:
        merged = merger.merged(method.name, params, alpha=alpha)
        used = alpha if fixed is None else fixed
        for key in pre:
            want = update.base[key] + used * update.delta[key]
            torch.testing.assert_close(merged[key], want, rtol=0, atol=1e-6, msg=f"α = {alpha} on {key}")


def check_one_layer(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    whole = Merger(pre, fts).update(method.name, params)
    for key in pre:
        base, delta = Merger(pre, fts).layer_update(key, method.name, params)  # a fresh merger per key
        assert torch.equal(delta, whole.delta[key]), f"{key} merged alone differs from the whole-model merge"
        assert torch.equal(base, whole.base[key]), f"{key}'s base merged alone differs"


def check_streaming(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    paths = []
    for i, sd in enumerate([pre, *fts]):
        paths.append(tmp / f"{method.name}-{i}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
    out = tmp / f"{method.name}-merged.safetensors"
    merge_files(paths[0], paths[1:], method.name, out, params=params, alpha=0.7)
    from safetensors.torch import load_file

    streamed = load_file(str(out))
    merged = Merger(pre, fts).merged(method.name, params, alpha=0.7)
    for key in pre:
        torch.testing.assert_close(streamed[key], merged[key], rtol=0, atol=1e-6, msg=f"streamed {key}")


def _svd_spectrum(merger: Merger, key: str, method: Method, params: dict) -> np.ndarray:
    offset = merger.layer_offset(key, method.name, params).double()  # (m, n) θ − θ0
    return torch.linalg.svdvals(offset).numpy()  # (r,)


def _close(got: object, want: np.ndarray, what: str) -> None:
    got = np.asarray(torch.as_tensor(got).double() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    got = np.sort(np.pad(got, (0, len(want) - len(got))))[::-1]
    scale = max(float(want[0]), 1e-30)
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=SPECTRUM_RTOL, err_msg=what)


def check_views(method: Method, params: dict, tmp: Path) -> None:
    pre, fts = _models()
    merger = Merger(pre, fts)
    dec = Decompositions(Merger(pre, fts))
    for key in merger.matrix_keys:
        want = _svd_spectrum(merger, key, method, params)  # descending
        _close(dec.merged_spectrum(key, method.name, params), want, f"{key}: the spectrum the views draw")
        _close(dec.merged_layer(key, method.name, params).s, want, f"{key}: the SAR view's spectrum")
        if method.base != "pretrained":
            continue  # the routes below describe Δ around θ0
        with merger.layer(key, merger.shared(method, params)) as layer:
            if method.sum_basis is not None:
                _close(method.sum_basis(layer.sum_svd()[1], NUM_TASKS), want, f"{key}: sum_basis")
                _check_sum_vectors(merger, key, method, params, *layer.sum_svd()[:2])
            if method.spectrum is not None:
                _close(method.spectrum(layer, params), want, f"{key}: Method.spectrum")
            if method.factors is not None:
                u, s = method.factors(layer, params)
                _close(s, want, f"{key}: Method.factors' σ")
                _check_left_vectors(merger, key, method, params, u)


def _check_left_vectors(merger: Merger, key: str, method: Method, params: dict, u: torch.Tensor) -> None:
    """``u`` (m, r') orthonormal, and ΔM inside its span: U Uᵀ ΔM = ΔM."""
    u = u.double()
    eye = torch.eye(u.shape[1], dtype=torch.float64)
    assert float((u.T @ u - eye).abs().max()) < 1e-4, f"{key}: factors' left vectors are not orthonormal"
    offset = merger.layer_offset(key, method.name, params).double()  # (m, n)
    rest = offset - u @ (u.T @ offset)
    assert float(rest.norm() / offset.norm()) < 1e-4, f"{key}: ΔM leaves the factors' span"


def _check_sum_vectors(merger: Merger, key: str, method: Method, params: dict, u: torch.Tensor,
                       sigma: torch.Tensor) -> None:
    """ΔM's energy along each of the sum's left vectors ``u`` (m, r) is its σ_i² from ``sum_basis``
    of the sum's ``sigma`` (r,): the sum's vectors are ΔM's own, in their order."""
    offset = merger.layer_offset(key, method.name, params).double()  # (m, n)
    along = (u.double().T @ offset).square().sum(1)  # (r,)
    want = torch.as_tensor(method.sum_basis(sigma, NUM_TASKS)).double().square()  # (r,)
    scale = float(along.max().clamp_min(1e-30))
    assert float((along - want).abs().max()) / scale < 1e-3, f"{key}: ΔM is not diagonal in the sum's basis"


CHECKS: dict[str, Callable[[Method, dict, Path], None]] = {
    "shapes_and_dtype": check_shapes_and_dtype,
    "base": check_base,
    "alpha": check_alpha,
    "one_layer": check_one_layer,
    "streaming": check_streaming,
    "views": check_views,
}


def check_method(name: str, tmp: Path, checks: tuple[str, ...] = tuple(CHECKS)) -> None:
    """Run ``checks`` on every variant of method ``name``; AssertionError names the check."""
    method = get_method(name)
    for params in variants(method):
        for check in checks:
            try:
                CHECKS[check](method, params, tmp)
            except AssertionError as err:
                raise AssertionError(f"{name} {params}: {check}: {err}") from err
