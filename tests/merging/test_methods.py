"""Every method equals the plain float64 reference (tests/merging/reference.py), plus the
identities docs/design.md, Methods implies."""

from __future__ import annotations

import pytest
import torch

from merging.merge import Merger
from merging.methods.common import Layer
from merging.methods.iso import common_rank
from merging.methods.ties import ties
from merging.registry import all_methods, get_method
from tests.merging import reference
from tests.merging.conftest import make_models

CASES = [
    ("task_arithmetic", {}), ("weight_averaging", {}), ("ties", {}), ("ties", {"top_k": 55}),
    ("tsv_m", {}), ("iso_c", {}), ("iso_cts", {}), ("iso_cts", {"common_fraction": 0.5}),
    ("iso_cts", {"common_fraction": 0.0}), ("cart", {}), ("cart", {"rank_ratio": 0.3}),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def test_every_registered_method_has_a_case() -> None:
    assert set(all_methods()) == {name for name, _ in CASES}


@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}{p}" for m, p in CASES])
def test_engine_equals_float64_reference(models, method: str, params: dict) -> None:
    pre, fts = models
    update = Merger(pre, fts, device="cpu").update(method, params)
    base, delta, fixed = reference.reference_update(method, pre, fts, **params)
    assert update.fixed_alpha == fixed
    for key in pre:
        assert update.delta[key].shape == pre[key].shape and update.delta[key].dtype == torch.float32
        assert rel(update.base[key], base[key]) < 1e-6, key
        if float(delta[key].norm()) < 1e-9:
            assert float(update.delta[key].norm()) < 1e-5, key
        else:
            assert rel(update.delta[key], delta[key]) < 1e-4, (key, rel(update.delta[key], delta[key]))


@pytest.mark.parametrize(("r", "tasks", "f", "expected"), [
    (768, 8, 0.8, (616, 19)), (768, 14, 0.8, (614, 11)), (768, 20, 0.8, (608, 8)),
    (768, 8, 1.0, (768, 0)), (768, 8, 0.0, (0, 96)), (13, 8, 0.0, (5, 1)), (20, 8, 0.0, (4, 2)),
])
def test_common_rank_examples(r: int, tasks: int, f: float, expected: tuple[int, int]) -> None:
    assert common_rank(r, tasks, f) == expected
    assert reference.common_rank(r, tasks, f) == expected


def test_iso_c_spectrum_is_flat_and_equals_mean_singular_value() -> None:
    pre, fts = make_models(4, seed=7)
    merger = Merger(pre, fts, device="cpu")
    delta = merger.update("iso_c").delta
    for key in merger.matrix_keys:
        s = torch.linalg.svdvals(delta[key].double())
        total = torch.linalg.svdvals(sum(merger.task_matrix(key, t) for t in range(merger.num_tasks)).double())
        assert torch.allclose(s, torch.full_like(s, float(total.mean())), rtol=1e-5), key


def test_iso_cts_with_common_fraction_one_is_iso_c() -> None:
    pre, fts = make_models(3, seed=3)
    merger = Merger(pre, fts, device="cpu")
    a = merger.update("iso_cts", {"common_fraction": 1.0}).delta
    b = merger.update("iso_c").delta
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in pre)


def test_iso_cts_spectrum_is_flat() -> None:
    pre, fts = make_models(4, seed=5)
    merger = Merger(pre, fts, device="cpu")
    delta = merger.update("iso_cts", {"common_fraction": 0.5}).delta
    for key in merger.matrix_keys:
        s = torch.linalg.svdvals(delta[key].double())
        assert float(s.max() / s.min()) < 1 + 1e-4, key


def test_cart_with_full_rank_is_weight_averaging() -> None:
    """ρ = 1 keeps every centered vector whole; they sum to 0, so θ = θavg for any λ."""
    pre, fts = make_models(4, seed=11)
    merger = Merger(pre, fts, device="cpu")
    wa = merger.merged("weight_averaging")
    for lam in (0.5, 2.0):
        cart = merger.merged("cart", {"rank_ratio": 1.0}, alpha=lam)
        assert all(torch.allclose(cart[k], wa[k], atol=1e-5) for k in pre)


def test_weight_averaging_ignores_alpha_and_is_the_mean() -> None:
    pre, fts = make_models(3, seed=2)
    merger = Merger(pre, fts, device="cpu")
    merged = merger.merged("weight_averaging", alpha=2.5)
    for k in pre:
        assert torch.allclose(merged[k], sum(ft[k] for ft in fts) / 3, atol=1e-6)


def test_ties_keeps_only_agreeing_top_entries_closed_form() -> None:
    pre = {"w": torch.zeros(5)}
    fts = [{"w": torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0])}, {"w": torch.tensor([-1.0, -4.0, 0.2, 2.0, 0.1])}]
    delta = Merger(pre, fts, device="cpu").update("ties", {"top_k": 40}).delta["w"]
    # task 1 keeps {3, 2}, task 2 keeps {-4, 2}; elected signs +, -, 0, +, 0
    assert delta.tolist() == [3.0, -4.0, 0.0, 2.0, 0.0]


def plain_ties(taus: list[torch.Tensor], cuts: list[float]) -> torch.Tensor:
    """TIES's trim, elect and disjoint mean spelled out with masks (docs/design.md, Methods)."""
    stack = torch.stack(taus)
    kept = torch.where(stack.abs() >= torch.tensor(cuts).view(-1, *([1] * taus[0].dim())), stack, 0.0)
    sign = torch.sign(kept.sum(0))
    agree = (torch.sign(kept) == sign) & (kept != 0)
    count = agree.sum(0)
    return torch.where(count > 0, (kept * agree).sum(0) / count.clamp_min(1), 0.0)


@pytest.mark.parametrize("trial", range(6))
def test_ties_in_place_passes_equal_the_plain_masks_bit_for_bit(trial: int) -> None:
    gen = torch.Generator().manual_seed(trial)
    shape = [(30, 17), (101,), (4, 3, 5, 5)][trial % 3]
    taus = [torch.randn(*shape, generator=gen) for _ in range(3 + trial)]
    taus[0].view(-1)[:3] = 0.0
    taus[1] = -taus[0].clone() if trial % 2 else taus[1]  # exact cancellations: an elected sign of 0
    cuts = [float(t.abs().flatten().kthvalue(t.numel() // 3).values) for t in taus]
    cuts[-1] = float("inf")  # a task that keeps nothing
    got = ties(Layer(key="k", taus=taus, matrix=False, shared={"thresholds": cuts}), {})
    want = plain_ties(taus, cuts)
    assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())


def test_unknown_method_and_bad_params_are_method_errors() -> None:
    from merging.errors import MethodError

    pre, fts = make_models(2)
    merger = Merger(pre, fts, device="cpu")
    with pytest.raises(MethodError, match="unknown method"):
        merger.update("nope")
    with pytest.raises(MethodError, match="outside"):
        merger.update("iso_cts", {"common_fraction": 1.5})
    with pytest.raises(MethodError, match="no parameter"):
        merger.update("iso_c", {"common_fraction": 0.5})


def test_registry_schema_is_complete() -> None:
    for method in all_methods().values():
        assert method.paper_url.startswith("https://arxiv.org/") and method.summary and callable(method.fn)
        for p in method.params:
            assert p.low <= p.default <= p.high and 0 < p.step <= p.high - p.low and p.help
    assert get_method("iso_cts").defaults() == {"common_fraction": 0.8}
    assert get_method("ties").defaults() == {"top_k": 20.0}
    assert get_method("cart").defaults() == {"rank_ratio": 0.12}
    assert {n for n, m in all_methods().items() if m.spectral} == {"tsv_m", "iso_c", "iso_cts", "cart"}
    assert [n for n, m in all_methods().items() if m.prepare] == ["ties"]
    assert [n for n, m in all_methods().items() if m.base == "average"] == ["cart"]
    colors = [m.color for m in all_methods().values()]
    assert len(set(colors)) == len(colors) and all(c.startswith("#") and len(c) == 7 for c in colors)


@pytest.mark.slow
def test_iso_cts_fast_kernels_equal_reference_and_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tall (1152×384) and wide (384×1152) layers with T = 8 take the Gram SVD of the sum and the
    block-Krylov residual eigenpairs; the result equals the float64 reference, and a sweep on
    one Merger (residual Grams moved up and down in k, Krylov warm-started) equals fresh merges."""
    from merging import linalg

    used = {"gram": 0, "krylov": 0}
    real_gram, real_krylov = linalg._gram_eigh, linalg._krylov_top

    def gram_spy(*args):
        got = real_gram(*args)
        used["gram"] += got is not None
        return got

    def krylov_spy(*args):
        got = real_krylov(*args)
        used["krylov"] += int(got[2].sum())  # accepted matrices of the batch
        return got

    monkeypatch.setattr(linalg, "_gram_eigh", gram_spy)
    monkeypatch.setattr(linalg, "_krylov_top", krylov_spy)
    # σi = 0.01·0.995^i: slowly decaying spectra, the regime in which the fast kernels are taken
    pre, fts = make_models(8, shapes={"blocks.0.mlp.c_fc.weight": (1152, 384), "blocks.0.mlp.c_proj.weight": (384, 1152)},
                           scale=0.01, decay=0.995)
    swept = Merger(pre, fts, device="cpu")
    for f in (0.9, 0.5, 0.95, 0.9):
        fresh = Merger(pre, fts, device="cpu").update("iso_cts", {"common_fraction": f}).delta
        _, delta, _ = reference.reference_update("iso_cts", pre, fts, common_fraction=f)
        again = swept.update("iso_cts", {"common_fraction": f}).delta
        for key in pre:
            assert rel(fresh[key], delta[key]) < 1e-4, (f, key, rel(fresh[key], delta[key]))
            assert rel(again[key], fresh[key]) < 5e-5, (f, key, rel(again[key], fresh[key]))
    assert used["gram"] >= 2 and used["krylov"] >= 8


@pytest.mark.slow
def test_iso_flatness_on_real_task_vectors() -> None:
    """The shipped digits zoo's task vectors (real fine-tunes: the tasks' residual directions
    overlap, so the stacked bases are ill-conditioned, κ up to ~1e4): Iso-C and Iso-CTS must
    still return exactly flat spectra on every matrix."""
    from zoo import load_zoo

    zoo = load_zoo("digits")
    merger = Merger(zoo.pretrained(), zoo.all_finetuned(), device="cpu")
    for method, params in (("iso_c", {}), ("iso_cts", {"common_fraction": 0.8}), ("iso_cts", {"common_fraction": 0.3})):
        delta = merger.update(method, params).delta
        for key in merger.matrix_keys:
            s = torch.linalg.svdvals(delta[key].double())
            assert float(s.max() / s.min()) < 1 + 2e-5, (method, params, key, float(s.max() / s.min()) - 1)


def test_iso_cts_is_flat_on_the_worst_conditioned_real_layer() -> None:
    """The shipped digits zoo's blk2 mlp.c_fc (512×128, 8 real fine-tunes) at f = 0.8: its
    stacked right vectors are the worst conditioned of the zoo, and Iso-CTS must still return a
    flat spectrum. polar_extended's leak fix (re-orthonormalizing Q⊥ against q) and its float64
    correction each hold it to ~3e-6; without the leak fix it is 1.3e-4, without float64 2.7e-3."""
    from zoo import load_zoo

    zoo = load_zoo("digits")
    key = "transformer.resblocks.2.mlp.c_fc.weight"
    merger = Merger({key: zoo.pretrained()[key]}, [{key: ft[key]} for ft in zoo.all_finetuned()], device="cpu")
    s = torch.linalg.svdvals(merger.update("iso_cts", {"common_fraction": 0.8}).delta[key].double())
    assert float(s.max() / s.min()) - 1 < 2e-5


def test_iso_cts_left_polar_projects_task_vectors_off_the_common_block() -> None:
    """The task left vectors X are residual directions, ⟂ Uk in exact arithmetic, but float32
    rounding leaves them a part along Uk. ``_left_polar`` projects it off before taking
    polar(X), so [Uk | polar(X)] stays orthonormal; without that its columns overlap by the leak."""
    from merging.methods import iso

    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(300, 40, generator=g, dtype=torch.float64))[0]
    uk, resid = basis[:, :30].float(), basis[:, 30:]  # (m, k), (m, Ts)
    leak = 1e-3 * uk.double() @ torch.randn(30, 10, generator=g, dtype=torch.float64)  # (m, Ts)
    x = (0.1 * resid + leak).float()  # κ(X) ≈ 1: the float32 Gram route (LEFT_MAX_COND) takes it
    got = iso._left_polar(uk, x).double()  # (m, k + Ts)
    assert float((got.T @ got - torch.eye(40, dtype=torch.float64)).abs().max()) < 1e-5


@pytest.mark.parametrize("shape", [(60, 16), (16, 60)])
def test_iso_cts_task_directions_below_float32_gram_reach_take_float64(monkeypatch: pytest.MonkeyPatch,
                                                                       shape: tuple[int, int]) -> None:
    """Where a task's σ_s/σ_1 < 0.1, float32 Gram eigenpairs would blur the top-s boundary; such
    tasks are recomputed through ``top_svd`` (float64 Gram), tall and wide alike, and the merge
    equals the float64 reference."""
    from merging.methods import iso

    gen = torch.Generator().manual_seed(13)
    spectrum = torch.tensor([1.0, 0.3, 0.1, 0.03, 1e-3, 5e-4, 2e-4, 1e-4] + [1e-5] * 8, dtype=torch.float64)
    taus = []
    for _ in range(4):
        u = torch.linalg.qr(torch.randn(shape[0], 16, generator=gen, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(shape[1], 16, generator=gen, dtype=torch.float64))[0]
        taus.append(((u * spectrum) @ v.T).float())
    calls = []
    real = iso.top_svd
    monkeypatch.setattr(iso, "top_svd", lambda a, rank: calls.append(rank) or real(a, rank))
    spec = get_method("iso_cts")
    got = spec.fn(Layer(key="k", taus=taus, matrix=True), spec.resolve({"common_fraction": 0.0}))  # s = 4
    assert calls == [4] * 4
    want = reference.iso_cts_matrix([t.double() for t in taus], common_fraction=0.0)
    assert rel(got, want) < 1e-4
