"""The Learn tour's toy and its claims, asserted on the toy's numbers: each statement a step of
the tour makes is checked here at the settings the tour uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import toy
from analysis.sar import figure_rank, sar


def test_each_task_matrix_is_rank_four_and_the_faint_part_keeps_sums_full_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for d in toy.task_matrices(toy.toy_zoo(0.5)):
        s = toy.singular_values(d)
        assert s[3] > 3 * s[4]  # rank 2 shared + rank 2 own, then only the faint part
    for shared in (0.0, 1.0):
        assert toy.weak_directions(toy.toy_zoo(shared)) > 1e-3  # full rank at both ends
    monkeypatch.setattr(toy, "NOISE", 0.0)
    assert [int(torch.linalg.matrix_rank(d.double(), rtol=1e-5)) for d in toy.task_matrices(toy.toy_zoo(0.5))] == [4] * 3
    ranks = {sh: int(torch.linalg.matrix_rank(sum(toy.task_matrices(toy.toy_zoo(sh))).double(), rtol=1e-5))
             for sh in (0.0, 0.5, 1.0)}
    assert ranks == {0.0: 6, 0.5: 8, 1.0: 2}  # without it, the sum is rank-deficient at both ends


def test_toy_nai_is_zero_for_the_pretrained_layer_one_for_the_expert_and_can_be_negative() -> None:
    zoo = toy.toy_zoo()
    theta0 = zoo.pretrained[toy.KEY]
    np.testing.assert_allclose(toy.toy_nai(zoo, theta0), 0.0, atol=1e-12)
    for t, ft in enumerate(zoo.finetuned):
        assert toy.toy_nai(zoo, ft[toy.KEY])[t] == pytest.approx(1.0, abs=1e-6)
    away = theta0 - 3 * toy.task_matrices(zoo)[0]  # moves task 1's outputs the wrong way
    assert toy.toy_nai(zoo, away)[0] < 0


def test_alpha_is_tuned_per_method_for_the_best_mean_toy_nai() -> None:
    zoo = toy.toy_zoo()
    result = toy.merge(zoo, "task_arithmetic")
    total = sum(toy.task_matrices(zoo))
    for alpha in (0.1, 1.0, 2.0):
        assert np.mean(toy.toy_nai(zoo, zoo.pretrained[toy.KEY] + alpha * total)) <= np.mean(result.nai) + 1e-9
    assert toy.merge(zoo, "weight_averaging").alpha == pytest.approx(1 / 3)  # fixed α is kept
    cart = toy.merge(zoo, "cart")
    np.testing.assert_allclose(cart.update, cart.weight - zoo.pretrained[toy.KEY])  # CART: update from θ0


def test_flattening_rescues_the_weak_task_and_iso_cts_does_best_at_the_default() -> None:
    zoo = toy.toy_zoo()  # shared 0.5, weak 0.3
    nai = {m: toy.merge(zoo, m, {"common_fraction": toy.DEFAULT_FRACTION} if m == "iso_cts" else None).nai
           for m in toy.TOUR_METHODS}
    weak = toy.TASKS - 1
    assert min(nai["task_arithmetic"]) == nai["task_arithmetic"][weak]  # TA leaves the weak task behind
    assert nai["iso_c"][weak] > nai["task_arithmetic"][weak] + 0.1  # Iso-C rescues it
    assert np.mean(nai["iso_c"]) < np.mean(nai["task_arithmetic"])  # at a price to the strong tasks
    assert nai["iso_cts"][weak] > nai["iso_c"][weak]
    assert np.mean(nai["iso_cts"]) > max(np.mean(nai["iso_c"]), np.mean(nai["task_arithmetic"]))


def test_with_a_strongly_shared_toy_task_arithmetic_wins() -> None:
    zoo = toy.toy_zoo(shared=0.9)
    means = {m: np.mean(toy.merge(zoo, m, {"common_fraction": toy.DEFAULT_FRACTION} if m == "iso_cts" else None).nai)
             for m in toy.TOUR_METHODS}
    assert means["task_arithmetic"] > max(means["iso_c"], means["iso_cts"]) + 0.2


@pytest.mark.parametrize(("fraction", "k", "s"), [(0.0, 2, 2), (0.25, 2, 2), (0.5, 5, 1), (0.8, 5, 1), (1.0, 8, 0)])
def test_iso_cts_stack_has_k_common_and_s_per_task(fraction: float, k: int, s: int) -> None:
    deltas = toy.task_matrices(toy.toy_zoo())
    blocks = toy.iso_cts_blocks(deltas, fraction)
    assert [len(b) for _, b in blocks] == [k] + [s] * toy.TASKS and k + toy.TASKS * s == toy.SIZE
    np.testing.assert_allclose(blocks[0][1], toy.singular_values(sum(deltas))[:k], rtol=1e-6)
    merged = toy.merge(toy.toy_zoo(), "iso_cts", {"common_fraction": fraction}).delta
    sigma = torch.cat([b for _, b in blocks])  # the engine flattens the stack to its mean σ̄
    np.testing.assert_allclose(toy.singular_values(merged), float(sigma.mean()), rtol=1e-4)


def test_sar_of_a_flat_spectrum_is_a_tautology_under_eq6_and_tie_broken_by_the_sum() -> None:
    zoo = toy.toy_zoo()
    deltas, total = toy.task_matrices(zoo), sum(toy.task_matrices(zoo))
    iso = toy.merge(zoo, "iso_c").delta
    for eps in (0.05, 0.2, 0.35):  # k_M = 8 for any ε < √(1/8): SAR = 1 whatever the task
        assert [sar(d, iso, eps, "eq6") for d in deltas] == pytest.approx([1.0] * 3, abs=1e-6)
        assert sar(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)), iso, eps, "eq6") == pytest.approx(1, abs=1e-6)
    assert figure_rank(toy.singular_values(iso), 0.95) == 7
    u, _, _ = torch.linalg.svd(total.double())
    plain = u[:, :7]
    expected = [float(torch.linalg.norm(plain.T @ d.double()) / torch.linalg.norm(d.double())) for d in deltas]
    got = [sar(d, iso, 0.95, "figure", reference=total) for d in deltas]
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # the figure script's basis: the sum's own top-7
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    rotated = (iso.double() @ q) @ q.T  # same matrix by another route: float noise in the tied block
    np.testing.assert_allclose([sar(d, rotated, 0.95, "figure", reference=total) for d in deltas], got, rtol=1e-6)
    untied = [[sar(d, m, 0.95, "figure") for d in deltas] for m in (iso, rotated)]
    assert not np.allclose(*untied, atol=1e-2)  # without the rule, two routes to one matrix disagree


def test_toy_rejects_settings_outside_its_range() -> None:
    for shared, weak in ((1.5, 0.3), (0.5, 0.0)):
        with pytest.raises(ValueError, match="shared must be in"):
            toy.toy_zoo(shared, weak)
