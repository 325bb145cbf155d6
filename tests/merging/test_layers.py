"""The layer-lazy Merger: one key's merge equals that key of the whole-model merge for every
method, the per-key cache stays within its byte budget, and threads sharing one Merger get
exactly what they would get alone (the per-key caches move in place with the parameters)."""

from __future__ import annotations

import threading

import pytest
import torch

from merging.merge import Merger
from merging.registry import all_methods
from tests.merging.conftest import decaying, make_models

SHAPES = {  # large enough for BLAS to release the GIL, so threads really interleave
    "positional_embedding": (10, 48),
    "blocks.0.ln_1.weight": (48,),
    "blocks.0.attn.in_proj_weight": (144, 48),
    "blocks.0.attn.out_proj.weight": (48, 48),
    "blocks.0.mlp.c_fc.weight": (192, 48),
    "blocks.0.mlp.c_proj.weight": (48, 192),
    "proj": (48, 32),
}
PARAMS = {"iso_cts": {"common_fraction": 0.5}, "cart": {"rank_ratio": 0.3}, "ties": {"top_k": 30.0}}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius difference."""
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module")
def models() -> tuple[dict, list[dict]]:
    return make_models(5, seed=3, shapes=SHAPES, decay=0.93)


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_one_layer_equals_that_layer_of_the_whole_model(models: tuple[dict, list[dict]], method: str) -> None:
    pre, fts = models
    whole = Merger(pre, fts).update(method, PARAMS.get(method))
    for key in reversed(list(pre)):  # another order than the whole-model pass, each on a fresh merger
        base, delta = Merger(pre, fts).layer_update(key, method, PARAMS.get(method))
        assert torch.allclose(delta, whole.delta[key], rtol=1e-5, atol=1e-7), key
        assert torch.equal(base, whole.base[key]), key


def test_ties_thresholds_are_model_wide_and_computed_once(models: tuple[dict, list[dict]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from merging.methods import ties

    pre, fts = models
    calls = []
    real = ties.magnitude_threshold
    monkeypatch.setattr(ties, "magnitude_threshold", lambda v, k, **kw: calls.append(v.numel()) or real(v, k, **kw))
    merger = Merger(pre, fts)
    merger.layer_update("proj", "ties", {"top_k": 30.0})
    merger.layer_update("blocks.0.attn.in_proj_weight", "ties", {"top_k": 30.0})
    total = sum(v.numel() for v in pre.values())
    assert calls == [total] * len(fts)  # one pass over every parameter per task, once
    merger.layer_update("proj", "ties", {"top_k": 10.0})
    assert len(calls) == 2 * len(fts)  # a new top-k is a new model-wide pass


def test_cache_stays_within_its_budget_and_recomputes_the_same(models: tuple[dict, list[dict]]) -> None:
    pre, fts = models
    biggest = 4 * 144 * 48 * (len(fts) + 1)  # θ0 and the task vectors of the largest key
    small = Merger(pre, fts, cache_bytes=3 * biggest)
    roomy = Merger(pre, fts)
    for f in (0.5, 0.2, 0.5):
        got = small.update("iso_cts", {"common_fraction": f}).delta
        assert small.cached_bytes() <= 3 * biggest
        want = roomy.update("iso_cts", {"common_fraction": f}).delta
        assert max(_rel(got[k], want[k]) for k in pre) < 1e-5  # recomputed after eviction: same numbers
    assert small.cached_bytes() < roomy.cached_bytes() / 4


def test_two_threads_with_different_fractions_get_the_sequential_results(models: tuple[dict, list[dict]]) -> None:
    pre, fts = models
    fractions = (0.2, 0.9)
    expected = {f: Merger(pre, fts).update("iso_cts", {"common_fraction": f}).delta for f in fractions}
    shared = Merger(pre, fts)
    errors: list[float] = []
    failures: list[BaseException] = []

    def worker(order: tuple[float, ...]) -> None:
        try:
            for f in order * 4:
                got = shared.update("iso_cts", {"common_fraction": f}).delta
                errors.append(max(_rel(got[k], expected[f][k]) for k in pre))
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(order,)) for order in (fractions, fractions[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(errors) == 16
    assert max(errors) < 1e-5  # the same as run alone (warm-started solvers differ by rounding only)


def test_layer_offset_is_the_update_from_theta0(models: tuple[dict, list[dict]]) -> None:
    pre, fts = models
    merger = Merger(pre, fts)
    key = "blocks.0.mlp.c_fc.weight"
    for method, alpha in (("cart", 1.7), ("iso_c", 0.6), ("weight_averaging", 3.0)):
        theta = merger.merged(method, PARAMS.get(method), alpha)[key]
        offset = merger.layer_offset(key, method, PARAMS.get(method), alpha)
        assert torch.allclose(offset, theta - pre[key], rtol=1e-5, atol=1e-6), method


def test_a_lazy_source_is_read_only_for_the_keys_asked(models: tuple[dict, list[dict]]) -> None:
    pre, fts = models

    class Counting(dict):  # a lazy checkpoint: shapes and dtypes from its "header", tensors on read
        reads: list[str] = []

        def __getitem__(self, key: str) -> torch.Tensor:
            Counting.reads.append(key)
            return super().__getitem__(key)

        def shape(self, key: str) -> tuple[int, ...]:
            return tuple(super().__getitem__(key).shape)

        def dtype(self, key: str) -> torch.dtype:
            return super().__getitem__(key).dtype

    merger = Merger(Counting(pre), [Counting(ft) for ft in fts])
    assert Counting.reads == []  # opening reads nothing: keys and shapes come from the headers
    merger.layer_update("proj", "iso_c")
    assert set(Counting.reads) == {"proj"}


def test_decaying_is_what_the_fixture_uses() -> None:  # guards the fixture's premise: smooth spectra
    s = torch.linalg.svdvals(decaying(20, 10, torch.Generator().manual_seed(0), 1.0, 0.9).double())
    assert torch.allclose(s, 0.9 ** torch.arange(10, dtype=torch.float64), rtol=1e-5)
