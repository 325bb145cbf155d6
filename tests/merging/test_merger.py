"""Merger: API shape, device/dtype contract, and reuse of cached decompositions."""

from __future__ import annotations

import pytest
import torch

from merging.errors import MismatchError, NonFiniteError
from merging import merge as merge_module
from merging.merge import MergeUpdate, Merger
from merging.tensors import task_vector
from merging.methods import common, iso
from tests.merging.conftest import make_models


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts every full SVD and top-k SVD the methods ask for."""
    calls = {"svd": 0, "top_svd": 0, "polar": 0}

    def wrap(module, name, counter):
        real = getattr(module, name)

        def counting(*args, **kwargs):
            calls[counter] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    wrap(common, "fast_svd", "svd")  # the SVD of Σt Δt (Layer.sum_svd)
    wrap(iso, "mean_scaled_polar", "polar")  # Iso-C's own polar of the sum
    wrap(common, "top_svd", "top_svd")
    return calls


def test_api_shape_and_contract() -> None:
    pre, fts = make_models(3)
    pre16 = {k: v.half() for k, v in pre.items()}
    merger = Merger(pre16, [{k: v.half() for k, v in ft.items()} for ft in fts], device="cpu")
    assert merger.num_tasks == 3 and merger.keys == list(pre)
    assert set(merger.matrix_keys) == {k for k, v in pre.items() if v.dim() == 2 and k != "text_projection"}
    tvs = [merger.task_vector(t) for t in range(merger.num_tasks)]
    assert len(tvs) == 3 and all(v.dtype == torch.float32 for v in tvs[0].values())
    update = merger.update("task_arithmetic")
    assert isinstance(update, MergeUpdate) and update.fixed_alpha is None
    merged = merger.merged("task_arithmetic", alpha=0.5)
    for k in pre:
        assert merged[k].device.type == "cpu" and merged[k].dtype == torch.float32
        assert torch.allclose(merged[k], pre16[k].float() + 0.5 * sum(tv[k] for tv in tvs))
    assert torch.equal(update.state()["proj"], update.base["proj"] + update.delta["proj"])  # α defaults to 1
    assert merger.update("weight_averaging").fixed_alpha == pytest.approx(1 / 3)


def test_second_iso_cts_fraction_reuses_the_sum_svd(counted: dict[str, int]) -> None:
    pre, fts = make_models(4)
    merger = Merger(pre, fts, device="cpu")
    merger.update("iso_cts", {"common_fraction": 0.5})  # s > 0 on every matrix
    assert counted["svd"] == len(merger.matrix_keys)  # one SVD of Σt Δt per matrix
    before = dict(counted)
    for f in (0.8, 0.2, 0.9, 0.0, 1.0):
        merger.update("iso_cts", {"common_fraction": f})
    assert counted["svd"] == before["svd"]  # no new full SVD whatever the fraction
    polars = counted["polar"]
    merger.update("iso_c")
    assert counted["svd"] == before["svd"] and counted["polar"] == polars  # Iso-C reuses it too
    Merger(pre, fts, device="cpu").update("iso_c")  # without a cached SVD it takes its own polar
    assert counted["polar"] == polars + len(merger.matrix_keys)


def test_second_cart_rank_and_tsv_reuse_decompositions(counted: dict[str, int]) -> None:
    pre, fts = make_models(3)
    merger = Merger(pre, fts, device="cpu")
    merger.update("cart", {"rank_ratio": 0.4})
    first = counted["top_svd"]
    assert first > 0
    merger.update("cart", {"rank_ratio": 0.2})
    merger.update("cart", {"rank_ratio": 0.4})
    assert counted["top_svd"] == first  # smaller ranks slice the cached triplets
    merger.update("tsv_m")
    after_tsv = counted["top_svd"]
    merger.update("tsv_m")
    assert counted["top_svd"] == after_tsv
    merger.clear_cache()
    merger.update("tsv_m")
    assert counted["top_svd"] > after_tsv


def test_cached_results_equal_fresh_results() -> None:
    pre, fts = make_models(3, seed=9)
    warm = Merger(pre, fts, device="cpu")
    for f in (1.0, 0.3, 0.8):  # fill the caches in another order first
        warm.update("iso_cts", {"common_fraction": f})
    a = warm.update("iso_cts", {"common_fraction": 0.5}).delta
    b = Merger(pre, fts, device="cpu").update("iso_cts", {"common_fraction": 0.5}).delta
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in pre)


def test_bad_inputs_raise_readable_errors() -> None:
    pre, fts = make_models(2)
    with pytest.raises(MismatchError, match="at least one"):
        Merger(pre, [], device="cpu")
    bad = dict(fts[0])
    bad["proj"] = torch.zeros(3, 3)
    with pytest.raises(MismatchError, match="proj"):
        Merger(pre, [fts[1], bad], device="cpu")
    nan = dict(fts[0])
    nan["proj"] = torch.full_like(nan["proj"], float("nan"))
    lazy = Merger(pre, [nan], device="cpu")  # checkpoints are read lazily: the key is checked when read
    with pytest.raises(NonFiniteError, match="fine-tuned model 1: tensor 'proj'"):
        lazy.update("task_arithmetic")


def test_progress_reaches_one() -> None:
    pre, fts = make_models(2)
    seen = []
    Merger(pre, fts, device="cpu").update("iso_c", progress=lambda f, m: seen.append((f, m)))
    assert seen[-1][0] == pytest.approx(1.0) and all(0 <= f <= 1 for f, _ in seen)


def test_linalg_is_the_only_decomposition_entry_point() -> None:
    """Method modules go through merging.linalg (robust kernels), never torch.linalg (svd,
    svdvals, eigh, qr, …) directly: every ``torch.linalg`` / ``linalg.`` attribute they use,
    found in their syntax tree whatever the spelling, belongs to merging.linalg."""
    import ast
    import inspect
    import pkgutil

    import merging.methods

    for info in pkgutil.iter_modules(merging.methods.__path__):
        module = __import__(f"merging.methods.{info.name}", fromlist=["_"])
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "linalg" and isinstance(node.value.value, ast.Name):
                assert node.value.value.id != "torch", (info.name, f"torch.linalg.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in ("torch.linalg", "torch"):
                assert all(a.name != "linalg" for a in node.names) and node.module != "torch.linalg", info.name


def test_summed_methods_stream_bitwise_the_same_sum_and_still_name_bad_tensors() -> None:
    pre, fts = make_models(4)
    merger = Merger(pre, fts, device="cpu")
    for method, alpha in (("task_arithmetic", 0.37), ("weight_averaging", None)):
        merged = merger.merged(method, alpha=alpha)
        a = 0.25 if alpha is None else alpha
        for key, base in pre.items():
            total = merged_sum(pre, fts, key)
            assert torch.equal(merger.layer_update(key, method)[1], total), (method, key)  # Δ: the same bits
            if method == "task_arithmetic":
                assert torch.equal(merged[key], base + a * total), (method, key)
                continue
            mean = fts[0][key].clone()  # weight averaging (αT = 1): θ straight from the checkpoints
            for ft in fts[1:]:
                mean += ft[key]
            assert torch.equal(merged[key], mean.mul_(a)), (method, key)
            torch.testing.assert_close(merged[key], base + a * total, rtol=0, atol=1e-6)
    ta = merger.merged("task_arithmetic", alpha=0.25)  # α = 1/T: the same mean
    assert all(torch.equal(ta[k], v) for k, v in merger.merged("weight_averaging").items())
    assert merger.cached_bytes() == 0  # the sum was streamed: no key's task vectors were kept
    streamed = merger.merged("iso_c", alpha=1.3)  # Iso-C reads only the sum too
    cached = Merger(pre, fts, device="cpu")
    for key in cached.keys:
        with cached.layer(key):  # every key read the regular way first
            pass
    assert all(torch.equal(streamed[k], v) for k, v in cached.merged("iso_c", alpha=1.3).items())
    assert merger.cached_bytes() == 0
    with merger.layer("proj") as layer:  # now the key is cached, with its sum
        cached = layer.total()
    base, delta = merger.layer_update("proj", "task_arithmetic")  # from the cache: the same bits, a copy
    assert torch.equal(delta, merged_sum(pre, fts, "proj")) and torch.equal(base, pre["proj"])
    assert delta.data_ptr() != cached.data_ptr()
    inf = dict(fts[2])
    inf["proj"] = inf["proj"].clone()
    inf["proj"][0, 0] = float("inf")
    neg = dict(fts[3])
    neg["proj"] = neg["proj"].clone()
    neg["proj"][0, 0] = -float("inf")  # +Inf and −Inf in two tasks: the sum is NaN, each names itself
    with pytest.raises(NonFiniteError, match="fine-tuned model 3: tensor 'proj'"):
        Merger(pre, [fts[0], fts[1], inf, neg], device="cpu").merged("task_arithmetic")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.bool])
def test_the_chunked_sum_equals_summed_task_vectors_bit_for_bit(monkeypatch: pytest.MonkeyPatch,
                                                                 dtype: torch.dtype) -> None:
    """Chunk boundaries (a chunk of 5 elements here) and every stored dtype: the same bits as
    τ0 + τ1 + … of ``task_vector``s, whether all tasks are added at once (in memory) or one at a
    time (read from files)."""
    monkeypatch.setattr(merge_module, "SUM_CHUNK", 5)
    gen = torch.Generator().manual_seed(0)
    for n in (1, 5, 12, 20):
        pre = torch.randn(n, generator=gen)  # (n,)
        fts = [(torch.randn(n, generator=gen) * 3).to(dtype) for _ in range(4)]
        want = task_vector(pre, fts[0])
        for x in fts[1:]:
            want += task_vector(pre, x)
        at_once, one_by_one = torch.empty_like(pre), torch.empty_like(pre)
        merge_module.add_checkpoints(at_once, fts, pre)
        merge_module.add_checkpoints(one_by_one, fts[:1], pre)
        for x in fts[1:]:
            merge_module.add_checkpoints(one_by_one, [x], pre, into=True)
        assert torch.equal(at_once, want) and torch.equal(one_by_one, want), n
    pre, fts = make_models(num_tasks=3)
    merger = Merger(pre, fts, device="cpu")  # every key over chunks of 5
    for key in pre:
        assert torch.equal(merger.layer_update(key, "task_arithmetic")[1], merged_sum(pre, fts, key)), key


def merged_sum(pre: dict, fts: list, key: str) -> torch.Tensor:
    """Σt τt in the engine's order: τ0, then each τt added."""
    total = fts[0][key] - pre[key]
    for ft in fts[1:]:
        total = total + (ft[key] - pre[key])
    return total
