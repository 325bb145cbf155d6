"""SAR (Eq. 5–6) on constructed matrices with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.sar import alignment_rank, alignment_ratio, sar


def _orthonormal(m: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q  # (m, k)


@pytest.mark.parametrize(("eps", "expected"), [(0.05, 4), (0.2, 3), (0.45, 2), (0.8, 1), (0.99, 1)])
def test_alignment_rank_on_known_spectrum(eps: float, expected: int) -> None:
    # σ² = 1, 0.25, 0.0625, 0.015625; total 1.328125. Tail² after k: 0.328, 0.078, 0.0156, 0.
    sigma = torch.tensor([1.0, 0.5, 0.25, 0.125])
    assert alignment_rank(sigma, eps) == expected


def test_alignment_rank_edge_cases() -> None:
    assert alignment_rank(torch.zeros(5), 0.05) == 0
    assert alignment_rank(torch.ones(100), 0.05) == 100  # flat: tail ≤ 0.05·‖·‖ needs ≥ 99.75 values
    assert alignment_rank(torch.ones(100), 0.1) == 99  # (100 − k) ≤ 0.01·100 ⇒ k ≥ 99
    assert alignment_rank(torch.tensor([2.0, 0.0, 0.0]), 0.0) == 1


def _merged(m: int = 12, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    u, v = _orthonormal(m, n, 1), _orthonormal(n, n, 2)
    sigma = torch.tensor([5.0, 4.0, 3.0, 1e-4, 1e-5, 0.0, 0.0, 0.0], dtype=torch.float64)
    return u @ torch.diag(sigma) @ v.T, u  # ΔM (m, n) with k_M = 3 at ε = 0.05


def test_task_inside_merged_subspace_has_sar_one() -> None:
    merged, u = _merged()
    task = u[:, :3] @ torch.randn(3, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert sar(task, merged, rule="eq6") == pytest.approx(1.0, abs=1e-6)


def test_orthogonal_task_has_sar_zero() -> None:
    merged, u = _merged()
    task = u[:, 5:] @ torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert sar(task, merged, rule="eq6") == pytest.approx(0.0, abs=1e-6)


def test_mixed_task_has_closed_form_sar() -> None:
    merged, u = _merged()
    w = _orthonormal(8, 2, 5)
    inside = 3.0 * torch.outer(u[:, 0], w[:, 0])  # ‖·‖F = 3, in span(U_3)
    outside = 4.0 * torch.outer(u[:, 6], w[:, 1])  # ‖·‖F = 4, orthogonal to it
    assert sar(inside + outside, merged, rule="eq6") == pytest.approx(3 / 5, abs=1e-6)
    # with a larger ε only the top-1 direction counts: still 3/5 (inside lies on u1)
    assert sar(inside + outside, merged, eps=0.7, rule="eq6") == pytest.approx(3 / 5, abs=1e-6)


def test_alignment_ratio_matches_projection_and_zero_task_is_nan() -> None:
    g = torch.Generator().manual_seed(6)
    basis = _orthonormal(10, 4, 7)
    task = torch.randn(10, 6, generator=g, dtype=torch.float64)
    expected = torch.linalg.matrix_norm(basis @ basis.T @ task) / torch.linalg.matrix_norm(task)
    assert alignment_ratio(task, basis) == pytest.approx(float(expected), rel=1e-10)
    assert math.isnan(alignment_ratio(torch.zeros(10, 6), basis))


def test_figure_rank_follows_the_figure_script() -> None:
    from analysis.sar import figure_rank

    # σ² = 1, 0.25, 0.0625, 0.015625 (total 1.328): cumulative norm 0.868, 0.970, 0.993, 1.0
    sigma = torch.tensor([1.0, 0.5, 0.25, 0.125])
    assert figure_rank(sigma, 0.95) == 1  # the second direction is the first above 0.95; the script keeps 1
    assert figure_rank(sigma, 0.98) == 2 and figure_rank(sigma, 0.5) == 0
    assert figure_rank(torch.ones(8), 0.95) == 7  # flat: √(k/8) > 0.95 first at k = 8
    assert figure_rank(torch.ones(100), 0.95) == 90  # √(91/100) > 0.95 first at the 91st
    assert figure_rank(torch.zeros(3), 0.95) == 0


def test_rank_by_rule_dispatches_and_validates() -> None:
    from analysis.sar import K_RULES, rank_by_rule

    sigma = torch.tensor([1.0, 0.5, 0.25, 0.125])
    assert rank_by_rule(sigma, "eq6", 0.05) == alignment_rank(sigma, 0.05) == 4
    assert rank_by_rule(sigma) == 1 and {n: r.default for n, r in K_RULES.items()} == {"eq6": 0.05, "figure": 0.95}  # default: the figure rule
    for rule, bad in (("eq6", 1.0), ("figure", 0.0), ("nope", 0.5)):
        with pytest.raises(ValueError, match="rule"):
            rank_by_rule(sigma, rule, bad)


def test_ordered_basis_orders_a_tied_block_by_the_reference() -> None:
    from analysis.sar import ordered_basis

    u = _orthonormal(6, 6, 3)
    v = _orthonormal(6, 6, 4)
    reference = u @ torch.diag(torch.tensor([6.0, 5, 4, 3, 2, 1], dtype=torch.float64)) @ v.T
    flat = u @ v.T  # every σ = 1: any basis would do
    basis, s = ordered_basis(flat, reference)
    torch.testing.assert_close(s, torch.ones(6, dtype=torch.float64))
    for k in (1, 3, 5):  # the top-k span is the reference's top-k span
        torch.testing.assert_close(basis[:, :k] @ basis[:, :k].T, u[:, :k] @ u[:, :k].T, atol=1e-10, rtol=0)


def test_one_registry_of_k_rules_and_one_default_everywhere() -> None:
    """sar(), sar_table(), the report and the CLI all take the registry's default rule and values, and
    the CLI checks a value against the registry's range."""
    import inspect

    from analysis.__main__ import parser
    from analysis.k_rules import DEFAULT_RULE, K_RULES
    from analysis.report import build_report
    from analysis.sar import sar_table

    merged, u = _merged()
    task = u[:, :5] @ torch.randn(5, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert sar(task, merged) == sar(task, merged, K_RULES[DEFAULT_RULE].default, DEFAULT_RULE)
    assert sar(task, merged) != sar(task, merged, rule="eq6")  # the rules differ here: the default is not eq6
    for fn in (sar, sar_table, build_report):
        assert inspect.signature(fn).parameters["rule"].default == DEFAULT_RULE, fn.__name__
    args = parser().parse_args(["report", "--out", "x"])
    assert args.k_rule == DEFAULT_RULE
    assert {name: getattr(args, r.cli_flag.lstrip("-")) for name, r in K_RULES.items()} == {
        name: r.default for name, r in K_RULES.items()}
    for name, rule in K_RULES.items():
        bad = rule.low if rule.low_open else rule.high  # the open end of its range
        with pytest.raises(SystemExit):
            parser().parse_args(["report", "--out", "x", "--k-rule", name, rule.cli_flag, str(bad)])
