"""Spectra, the Iso-CTS boundary and the SAR table on a real Merger, against plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.decompositions import Decompositions
from analysis.sar import alignment_rank, sar_average, sar_table, merged_ranks
from analysis.spectra import common_boundary, spectra
from merging.merge import Merger
from merging.methods.iso import common_rank
from tests.analysis.synthetic import SyntheticZoo

KEYS = ["transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight"]


@pytest.fixture(scope="module")
def dec() -> Decompositions:
    zoo = SyntheticZoo()
    return Decompositions(Merger(zoo.pretrained(), zoo.all_finetuned()), zoo.tasks)


def _taus(dec: Decompositions, key: str) -> list[torch.Tensor]:
    return [dec.merger.task_matrix(key, t).double() for t in range(dec.merger.num_tasks)]


def test_spectra_match_plain_svdvals(dec: Decompositions) -> None:
    frame = spectra(dec, {"iso_c": None})
    assert set(frame["key"]) == set(KEYS) and set(frame["kind"]) == {"task", "sum", "merged"}
    for key in KEYS:
        taus = _taus(dec, key)
        part = frame[frame["key"] == key]
        got = part[part["source"] == "B"]["sigma"].to_numpy()
        np.testing.assert_allclose(got, torch.linalg.svdvals(taus[1]).numpy(), rtol=1e-4, atol=1e-6)
        total = part[part["source"] == "TA sum"]["sigma"].to_numpy()
        np.testing.assert_allclose(total, torch.linalg.svdvals(sum(taus)).numpy(), rtol=1e-4, atol=1e-6)
        iso = part[part["source"] == "Iso-C"]
        assert np.allclose(iso["sigma"], iso["sigma"].iloc[0], rtol=1e-4)  # Iso-C flattens the spectrum
        assert iso["energy"].iloc[-1] == pytest.approx(1.0) and (np.diff(iso["energy"]) >= 0).all()
    assert set(frame["layer"]) == {"blk0 · attn.in_proj", "blk0 · mlp.c_fc"}


def test_merged_decomposition_is_cached(dec: Decompositions, monkeypatch: pytest.MonkeyPatch) -> None:
    dec.merged("iso_cts", {"common_fraction": 0.5})
    calls = []
    original = dec._compute_merged
    monkeypatch.setattr(dec, "_compute_merged", lambda *a, **k: calls.append(a) or original(*a, **k))
    dec.merged("iso_cts", {"common_fraction": 0.5})
    spectra(dec, {"iso_cts": {"common_fraction": 0.5}})
    assert calls == []
    dec.merged("iso_cts", {"common_fraction": 0.3}, keys=KEYS[:1])  # a new value: that layer only
    assert [a[0] for a in calls] == KEYS[:1]


def test_factors_equal_the_svd_of_the_merged_update(dec: Decompositions) -> None:
    """Iso-CTS and TSV-M read their spectrum and basis from their own factors: the same σ and the
    same SAR as an SVD of the merged update (checked on the non-tied spectrum of TSV-M, and on
    Iso-CTS's flat one through the full-basis projection, which any basis shares)."""
    for method, params in (("tsv_m", None), ("iso_cts", {"common_fraction": 0.5})):
        for key in KEYS:
            got = dec.merged_layer(key, method, params)
            offset = dec.merger.layer_offset(key, method, params).double()
            u, s, _ = torch.linalg.svd(offset, full_matrices=False)
            np.testing.assert_allclose(got.s, s.numpy(), rtol=1e-4, atol=1e-7)
            rank = int((s > 1e-6 * s[0]).sum())  # directions of zero σ are arbitrary and never in k_M
            want = torch.stack([(u[:, :rank].T @ tau).square().sum(1) for tau in _taus(dec, key)]).numpy()
            np.testing.assert_allclose(got.proj[:, :rank].sum(1), want.sum(1), rtol=1e-4)  # the same span
            if method == "tsv_m":
                np.testing.assert_allclose(got.proj[:, :rank], want, rtol=1e-3, atol=1e-9)


def test_boundary_uses_common_rank(dec: Decompositions) -> None:
    bound = common_boundary(dec, 0.5)
    assert list(bound["r"]) == [4, 4]
    assert list(bound["k"]) == [common_rank(4, 3, 0.5)[0]] * 2


def test_sar_table_matches_reference(dec: Decompositions) -> None:
    table = sar_table(dec, "task_arithmetic", eps=0.05, rule="eq6")
    assert len(table) == len(KEYS) * 3
    delta = dec.merger.update("task_arithmetic", {}).delta
    for key in KEYS:
        u, s, _ = torch.linalg.svd(delta[key].double(), full_matrices=False)
        k = alignment_rank(s, 0.05)
        for task, tau in zip("ABC", _taus(dec, key)):
            ref = float(torch.linalg.matrix_norm(u[:, :k] @ u[:, :k].T @ tau) / torch.linalg.matrix_norm(tau))
            row = table[(table["key"] == key) & (table["task"] == task)].iloc[0]
            assert row["sar"] == pytest.approx(ref, abs=1e-5) and row["k_m"] == k
    avg = sar_average(table)
    assert len(avg) == 3 and avg["sar_avg"].between(0, 1 + 1e-6).all()
    assert list(merged_ranks(table)["key"]) == KEYS


def test_sar_table_breaks_ties_of_a_flat_spectrum_as_the_figure_script(dec: Decompositions) -> None:
    """Iso-C's spectrum is flat, so its top-3 of 4 directions are any 3; the table takes the TA
    sum's own top-3, as the authors' figure script does for Iso."""
    table = sar_table(dec, "iso_c", eps=0.95, rule="figure")
    for key in KEYS:
        u, _, _ = torch.linalg.svd(sum(_taus(dec, key)), full_matrices=False)
        for task, tau in zip("ABC", _taus(dec, key)):
            ref = float(torch.linalg.matrix_norm(u[:, :3].T @ tau) / torch.linalg.matrix_norm(tau))
            row = table[(table["key"] == key) & (table["task"] == task)].iloc[0]
            assert row["k_m"] == 3 and row["sar"] == pytest.approx(ref, abs=1e-5)


def test_spectrum_only_path_equals_the_full_decomposition() -> None:
    """The Spectra view's σ(ΔM) (no projections) equals the σ the SAR path computes, for every
    method, computed on separate Decompositions so neither reuses the other."""
    from merging.registry import all_methods

    zoo = SyntheticZoo(seed=4)
    light = Decompositions(Merger(zoo.pretrained(), zoo.all_finetuned()), zoo.tasks)
    full = Decompositions(Merger(zoo.pretrained(), zoo.all_finetuned()), zoo.tasks)
    cases = [(m, None) for m in all_methods()] + [("iso_cts", {"common_fraction": 0.3})]  # s = 1: task blocks
    for method, params in cases:
        for key in KEYS:
            np.testing.assert_allclose(light.merged_spectrum(key, method, params, 1.5),
                                       full.merged_layer(key, method, params, 1.5).s, rtol=1e-4, atol=1e-7)
    offset = full.merger.layer_offset(KEYS[0], "iso_cts", {"common_fraction": 0.3}).double()
    np.testing.assert_allclose(light.merged_spectrum(KEYS[0], "iso_cts", {"common_fraction": 0.3}),
                               torch.linalg.svdvals(offset).numpy(), rtol=1e-4)  # and equals the SVD of Δ


def test_a_restart_reads_every_layer_result_from_the_store(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-layer results go to the result store keyed by fingerprint, layer, method and params: a
    new process (a fresh Merger and Decompositions on the same store) computes nothing, and an
    unreadable stored blob is recomputed rather than trusted."""
    import sqlite3

    from analysis.sar import sar_table as table_of
    from analysis.store import ResultStore

    zoo = SyntheticZoo(seed=2)
    store = ResultStore(tmp_path / "results.sqlite")

    def fresh() -> Decompositions:
        return Decompositions(Merger(zoo.pretrained(), zoo.all_finetuned()), zoo.tasks,
                              fingerprint=zoo.fingerprint, store=store)

    first = fresh()
    want = table_of(first, "iso_cts", {"common_fraction": 0.5})
    spectra(first, {"cart": None})
    again = fresh()
    monkeypatch.setattr(again.merger, "layer", lambda *a, **k: pytest.fail("a stored result was recomputed"))
    got = table_of(again, "iso_cts", {"common_fraction": 0.5})
    assert got.equals(want)
    spectra(again, {"cart": None})
    monkeypatch.undo()
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE layers SET arrays = x'00' WHERE kind = 'merged'")
    third = fresh()
    assert table_of(third, "iso_cts", {"common_fraction": 0.5})["sar"].tolist() == pytest.approx(want["sar"].tolist())


def _plain_projections(merger: Merger, key: str, method: str, params: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """(σ(ΔM), ‖u_iᵀΔt‖²) the plain way, on a Merger of its own: ΔM's basis from the sum's SVD (TA,
    WA, Iso-C: σ is then the sum's), the method's factors, or an SVD of θ − θ0; ``order_ties`` over
    every tied block of the whole basis; one float64 product per task."""
    from analysis.basis import order_ties
    from merging.linalg import svd
    from merging.registry import get_method

    spec = get_method(method)
    values = spec.resolve(params)
    with merger.layer(key, merger.shared(spec, values)) as layer:
        if method in ("task_arithmetic", "weight_averaging", "iso_c"):
            u, s, _ = layer.sum_svd()
        elif spec.factors is not None:
            u, s = spec.factors(layer, values)
            u = order_ties(u, s, layer.total()).to(u.dtype)
        else:
            u, s, _ = svd(merger.layer_offset(key, spec, values))
            u = order_ties(u, s, layer.total()).to(u.dtype)
        taus = [tau.double() for tau in layer.taus]
        proj = torch.stack([(u.double().T @ tau).square().sum(1) for tau in taus]).numpy()  # (T, r')
        return s.double().numpy(), proj


@pytest.mark.parametrize("order", ["sum first", "method first"])
def test_projections_equal_the_plain_path_on_tall_wide_and_square_layers(order: str) -> None:
    """The shared-work projections (the tasks' left Grams on wide layers; on tall and square ones the
    sum's cached rows for the sum's own vectors, Iso-CTS's common block included; Iso-CTS's tie
    order from its task block alone) equal the plain path for every method: the same energy along
    every direction, hence the same SAR at every k_M."""
    from merging.registry import all_methods
    from tests.merging.conftest import make_models

    pre, fts = make_models(4, seed=3)
    fast = Decompositions(Merger(pre, fts))
    plain = Merger(pre, fts)
    cases = [(m, None) for m in all_methods()] + [("iso_cts", {"common_fraction": f}) for f in (0.3, 0.5)]
    if order == "method first":  # Iso-CTS fills the sum's rows before the sum basis reads them
        cases = cases[::-1]
    keys = ["blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight", "blocks.0.mlp.c_proj.weight", "proj"]
    for method, params in cases:
        for key in keys:
            got = fast.merged_layer(key, method, params)
            s, proj = _plain_projections(plain, key, method, params)
            norms = torch.stack([plain.task_matrix(key, t).double().square().sum() for t in range(4)]).numpy()
            width = proj.shape[1]
            if all_methods()[method].sum_basis is None:
                np.testing.assert_allclose(got.s[:width], s, rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(got.proj[:, :width] / norms[:, None], proj / norms[:, None], rtol=0, atol=2e-6,
                                       err_msg=f"{method} {params} {key}")
            assert np.abs(got.proj[:, width:]).max(initial=0) == 0


@pytest.mark.parametrize("route", ["thin polar", "polar_extended"])
def test_iso_cts_ties_are_ordered_from_its_task_block_alone(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Iso-CTS's flat basis is [Uk | task directions ⟂ Uk]: Uk carries σ1² … σk² of the sum and
    comes first as it is, so only the T·s task directions are rotated (one small eigenproblem, not
    an r×r one), with the plain path's result; the wide layer reads its projections from the left
    Grams, the tall one the common block's from the sum's rows. Through ``polar_extended`` (real
    task vectors' route on tall layers) the common block is Uk up to rounding, which counts."""
    import analysis.decompositions as decompositions
    import merging.methods.iso as iso
    from tests.merging.conftest import make_models

    if route == "polar_extended":
        monkeypatch.setattr(iso, "LEFT_MAX_COND", 1.0)
    pre, fts = make_models(4, seed=5)
    dec = Decompositions(Merger(pre, fts))
    sizes = []
    original = decompositions.block_order
    monkeypatch.setattr(decompositions, "block_order", lambda block, ref: sizes.append(block.shape[1]) or
                        original(block, ref))
    for key, (m, n) in (("blocks.0.attn.in_proj_weight", (24, 16)), ("blocks.0.mlp.c_proj.weight", (16, 24))):
        sizes.clear()
        dec.merged_layer(key, "iso_cts", {"common_fraction": 0.5})
        k, s = common_rank(min(m, n), 4, 0.5)
        assert sizes == [4 * s] and k > 0
        got = dec.merged_layer(key, "iso_cts", {"common_fraction": 0.5})
        _, want = _plain_projections(Merger(pre, fts), key, "iso_cts", {"common_fraction": 0.5})
        norms = torch.stack([dec.merger.task_matrix(key, t).double().square().sum() for t in range(4)]).numpy()
        np.testing.assert_allclose(got.proj / norms[:, None], want / norms[:, None], rtol=0, atol=2e-6)
        with dec.merger.layer(key) as layer:
            assert (layer.cache.left_grams is not None) == (m < n)
            rows = layer.cache.sum_rows
            assert (rows is not None) == (m > n) and (m < n or rows.shape[1] >= k)


def test_a_tied_block_whose_rest_is_not_orthogonal_to_the_sum_vectors_is_rotated_whole() -> None:
    """The shortcut needs the rest of the block orthogonal to its leading sum vectors; when it is not,
    the whole block is rotated, as ``order_ties`` does."""
    from analysis.basis import order_ties
    from analysis.decompositions import _tie_ordered
    from tests.merging.conftest import make_models

    pre, fts = make_models(3, seed=7)
    merger = Merger(pre, fts)
    with merger.layer("blocks.0.attn.in_proj_weight") as layer:
        u = layer.sum_svd()[0]  # (24, 16)
        q, _ = torch.linalg.qr(torch.cat([u[:, :4], u[:, 4:6] + 0.5 * u[:, :1]], 1))  # leans on u_1
        basis = torch.cat([u[:, :4], q[:, 4:]], 1)  # (24, 6): four sum vectors, then two others
        flat = torch.full((6,), 0.3)
        got, lead = _tie_ordered(basis, flat, layer)
        want = order_ties(basis, flat, layer.total()).to(basis.dtype)
        skewed = torch.cat([u[:, :4], u[:, 4:6] + 0.5 * u[:, :1]], 1)  # not orthonormal: no shortcut either
        got_skewed, lead_skewed = _tie_ordered(skewed, flat, layer)
        want_skewed = order_ties(skewed, flat, layer.total()).to(basis.dtype)
    torch.testing.assert_close(got.abs(), want.abs(), rtol=0, atol=1e-5)  # signs are arbitrary
    assert lead == 4  # q's columns are orthogonal to u[:, :4]: only they were rotated
    torch.testing.assert_close(got_skewed.abs(), want_skewed.abs(), rtol=0, atol=1e-5)
    assert lead_skewed == 0
