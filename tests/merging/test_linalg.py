"""The robust kernels of merging/linalg.py on tall, wide, square, rank-deficient and all-zero
inputs, and the fallback chain when LAPACK fails."""

from __future__ import annotations

import pytest
import torch

from merging import linalg
from merging.errors import NonFiniteError
from tests.merging.conftest import decaying


def _low_rank(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)


MATRICES = {
    "tall": lambda: torch.randn(30, 12, generator=torch.Generator().manual_seed(1)),
    "wide": lambda: torch.randn(12, 30, generator=torch.Generator().manual_seed(2)),
    "square": lambda: torch.randn(16, 16, generator=torch.Generator().manual_seed(3)),
    "rank_deficient_tall": lambda: _low_rank(30, 12, 4),
    "rank_deficient_wide": lambda: _low_rank(12, 30, 3),
    "all_zero": lambda: torch.zeros(10, 7),
    "one_by_n": lambda: torch.arange(1.0, 6.0).view(1, 5),
}


def _orthonormal_cols(u: torch.Tensor) -> bool:
    return torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-5)


@pytest.mark.parametrize("name", MATRICES)
def test_svd_reconstructs_with_orthonormal_factors(name: str) -> None:
    a = MATRICES[name]()
    u, s, vh = linalg.svd(a)
    r = min(a.shape)
    assert u.shape == (a.shape[0], r) and s.shape == (r,) and vh.shape == (r, a.shape[1])
    assert torch.all(s[:-1] >= s[1:]) and torch.all(s >= 0)
    assert _orthonormal_cols(u) and _orthonormal_cols(vh.T)
    assert torch.allclose((u * s) @ vh, a, atol=1e-4 * max(1.0, float(a.abs().max())))
    assert torch.allclose(linalg.singular_values(a), s, atol=1e-4 * max(1.0, float(s.max())))


@pytest.mark.parametrize("name", MATRICES)
def test_polar_is_orthonormal_and_closest(name: str) -> None:
    a = MATRICES[name]()
    q, s = linalg.polar(a), torch.linalg.svdvals(a.double())
    assert q.shape == a.shape
    assert _orthonormal_cols(q if a.shape[0] >= a.shape[1] else q.T)
    if float(s[-1]) > 1e-3 * float(s[0]):  # unique polar factor: compare with U Vᵀ
        u, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
        assert torch.allclose(q.double(), u @ vh, atol=1e-5)


def test_polar_gram_path_and_svd_path_agree() -> None:
    a = torch.randn(40, 10, generator=torch.Generator().manual_seed(4))  # κ ≈ 3: Gram route
    fast = linalg._gram_polar(a)
    assert fast is not None
    u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    assert torch.allclose(fast[0].double(), u @ vh, atol=2e-6) and torch.allclose(fast[1].double(), s, rtol=1e-5)
    assert linalg._gram_polar(_low_rank(40, 10, 3)) is None  # ill-conditioned: refuses
    assert linalg._gram_polar(torch.randn(15, 10)) is None  # square-ish: the SVD route


def _square(n: int, spectrum: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    return ((u * spectrum) @ v.T).float()  # (n, n)


@pytest.mark.parametrize("kappa", [3.0, 1e3, 1e5])
def test_newton_polar_equals_the_svd_polar_factor(kappa: float) -> None:
    """Square float32 matrices (geometric spectra up to κ = 1e5, and the Iso-C use: a sum of
    task matrices) take Newton's iteration; factor and mean singular value equal float64's."""
    n = 96
    a = _square(n, torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), n, dtype=torch.float64), seed=5)
    got = linalg._newton_polar(a)
    assert got is not None
    u, s, vh = torch.linalg.svd(a.double())
    q, mean = got
    tol = 2e-5 if kappa < 1e4 else 1e-3  # float32: ~ε·κ on the weakest directions
    assert float((q.double() - u @ vh).norm() / (u @ vh).norm()) < tol
    assert _orthonormal_cols(q)
    assert abs(float(mean) / float(s.mean()) - 1) < 1e-5
    assert torch.equal(linalg.polar(a), linalg.polar_with_mean(a)[0])


def test_newton_polar_refuses_near_singular_and_singular_input() -> None:
    """Beyond NEWTON_MAX_COND (and for exactly singular matrices) the SVD route answers."""
    n = 64
    spectrum = torch.ones(n, dtype=torch.float64)
    spectrum[-1] = 1e-7  # κ = 1e7 > NEWTON_MAX_COND; a float32 SVD still resolves this gap
    a = _square(n, spectrum, seed=6)
    assert linalg._newton_polar(a) is None
    u, _, vh = torch.linalg.svd(a.double())
    q, mean = linalg.polar_with_mean(a)
    assert float((q.double() - u @ vh).norm() / (u @ vh).norm()) < 1e-5
    assert abs(float(mean) - float(spectrum.mean())) < 1e-5
    singular = _low_rank(20, 20, 5)
    assert linalg._newton_polar(singular) is None
    assert _orthonormal_cols(linalg.polar(singular))
    zero_q, zero_mean = linalg.polar_with_mean(torch.zeros(8, 8))
    assert _orthonormal_cols(zero_q) and float(zero_mean) == 0.0


@pytest.mark.parametrize("shape,route", [((60, 20), "gram"), ((20, 60), "gram"), ((30, 30), "newton"),
                                         ((60, 20), "svd")])
def test_mean_scaled_polar_is_mean_singular_value_times_polar_factor(shape: tuple[int, int], route: str) -> None:
    """Iso-C's σ̄·polar(A) on every route: the Gram route (tall, and wide without a transposed
    output), Newton (square) and the SVD (an ill-conditioned tall matrix)."""
    a = _low_rank(*shape, rank=3) + 1e-3 * _low_rank(*shape, rank=min(shape), seed=7) if route == "svd" \
        else torch.randn(*shape, generator=torch.Generator().manual_seed(8))
    assert (linalg._gram_polar(a) is not None) == (route == "gram")
    # κ ≈ 1e4 on the SVD route: float32's own error is ~ε·κ, so compare with LAPACK's float32 SVD
    u, s, vh = torch.linalg.svd(a if route == "svd" else a.double(), full_matrices=False)
    got = linalg.mean_scaled_polar(a)
    assert got.is_contiguous() and got.shape == a.shape
    assert float((got.double() - s.mean() * u @ vh).norm() / (s.mean() * u @ vh).norm()) < 2e-5


def test_conditioned_polar_answers_only_within_its_condition_number() -> None:
    """The Gram eigh decides before any product: the polar factor when κ ≤ max_cond, None for
    ill-conditioned or square-ish input (the caller's other route), never an SVD."""
    g = torch.Generator().manual_seed(9)
    q = torch.linalg.qr(torch.randn(80, 12, generator=g, dtype=torch.float64))[0]
    a = q * torch.logspace(0, -1, 12, dtype=torch.float64)  # κ = 10
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    assert torch.allclose(linalg.conditioned_polar(a, 30.0), u @ vh, atol=1e-12)
    assert linalg.conditioned_polar(a, 5.0) is None
    assert linalg.conditioned_polar(torch.randn(15, 12, generator=g, dtype=torch.float64), 1e6) is None


def test_finite_check_is_exact_on_overflowing_sums() -> None:
    big = torch.full((4, 4), 3e38)  # finite, but the sum overflows to inf
    assert linalg._all_finite(big)
    big[1, 2] = float("inf")
    assert not linalg._all_finite(big)


@pytest.mark.parametrize(("shape", "rank"), [((50, 20), 5), ((20, 50), 5), ((30, 30), 15), ((30, 30), 30)])
def test_top_svd_equals_truncated_svd(shape: tuple[int, int], rank: int) -> None:
    g = torch.Generator().manual_seed(5)
    m, n = shape
    r = min(m, n)
    u0, _ = torch.linalg.qr(torch.randn(m, r, generator=g))
    v0, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
    a = (u0 * 0.9 ** torch.arange(r, dtype=torch.float32)) @ v0.T
    u, s, vh = linalg.top_svd(a, rank)
    ur, sr, vhr = torch.linalg.svd(a.double(), full_matrices=False)
    assert u.shape == (m, rank) and vh.shape == (rank, n)
    assert torch.allclose(s.double(), sr[:rank], rtol=1e-4)
    assert torch.allclose(((u * s) @ vh).double(), (ur[:, :rank] * sr[:rank]) @ vhr[:rank], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [0, 3, 10, 11, 40])  # 10 = n/4: the subset solver; 11 and up: the full eigh
def test_largest_eigh_equals_the_full_eigh(dtype: torch.dtype, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(8)
    a = decaying(120, 40, g, decay=0.9).to(dtype)
    sym = a.T @ a  # (40, 40), distinct eigenvalues 0.81^i
    full, vecs = torch.linalg.eigh(sym.double())
    if 0 < k <= 10:  # the subset solver answers alone
        monkeypatch.setattr(torch.linalg, "eigh", lambda *_: pytest.fail("the full eigh ran"))
    lam, w = linalg.largest_eigh(sym, k)
    monkeypatch.undo()
    assert lam.dtype == w.dtype == dtype and lam.shape == (k,) and w.shape == (40, k)
    assert torch.allclose(lam.double(), full.flip(0)[:k], rtol=1e-5, atol=1e-7)
    assert torch.allclose((w.double() * vecs.flip(1)[:, :k]).sum(0).abs(), torch.ones(k, dtype=torch.float64),
                          atol=1e-5)  # the same vectors, up to sign


def test_polar_extended_equals_polar_of_the_stack() -> None:
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(40, 12, generator=g))
    for x in (torch.randn(40, 8, generator=g),  # generic
              q[:, :3] @ torch.randn(3, 8, generator=g) + 1e-2 * torch.randn(40, 8, generator=g),  # near q
              torch.zeros(40, 0)):
        stack = torch.cat([q, x], 1).double()
        u, _, vh = torch.linalg.svd(stack, full_matrices=False)
        assert torch.allclose(linalg.polar_extended(q, x).double(), u @ vh, atol=1e-5)


def test_polar_extended_rank_deficient_is_still_orthonormal() -> None:
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(30, 10, generator=g))
    x = torch.cat([q[:, :2], torch.zeros(30, 3)], 1)  # columns inside span(q), and zeros
    assert _orthonormal_cols(linalg.polar_extended(q, x))


def test_svd_falls_back_when_lapack_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.linalg.svd
    calls = []

    def flaky(a: torch.Tensor, *args, **kwargs):
        calls.append(a.dtype)
        if a.shape[0] > 10:  # the first two kernels work on the full matrix: make them fail
            raise torch.linalg.LinAlgError("simulated: SVD did not converge")
        return real(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    a = torch.randn(40, 10, generator=torch.Generator().manual_seed(8))
    u, s, vh = linalg.svd(a.T)  # wide input: transposed, then fails twice, then QR route
    assert calls[:2] == [torch.float32, torch.float64]
    assert torch.allclose((u * s) @ vh, a.T, atol=1e-5) and u.dtype == torch.float32

    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no lapack")))
    u, s, vh = linalg.svd(a)  # every LAPACK route fails: the Gram eigh still answers
    assert torch.allclose((u * s) @ vh, a, atol=1e-5) and _orthonormal_cols(u)
    z = _low_rank(40, 10, 2)
    u, s, vh = linalg.svd(z)  # Gram route with zero singular values: completed U
    assert _orthonormal_cols(u) and torch.allclose((u * s) @ vh, z, atol=1e-3)


def test_svd_survives_non_finite_lapack_output(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.linalg.svd

    def nan_once(a: torch.Tensor, *args, **kwargs):
        u, s, vh = real(a, *args, **kwargs)
        return (u * float("nan"), s, vh) if a.dtype == torch.float32 else (u, s, vh)

    monkeypatch.setattr(torch.linalg, "svd", nan_once)
    a = torch.randn(20, 8, generator=torch.Generator().manual_seed(9))
    u, s, vh = linalg.svd(a)
    assert torch.isfinite(u).all() and torch.allclose((u * s) @ vh, a, atol=1e-5)


@pytest.mark.parametrize("kernel", [linalg.svd, linalg.singular_values, linalg.polar,
                                    lambda a: linalg.top_svd(a, 2)])
def test_non_finite_input_is_a_clear_error(kernel) -> None:
    a = torch.ones(6, 4)
    a[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        kernel(a)


def test_wide_768x3072_residual_like_matrix_is_finite() -> None:
    """The shape on which a plain float32 SVD can fail (docs/engine.md, Measured), rank-deficient like a
    residual: the engine's kernels return finite factors."""
    g = torch.Generator().manual_seed(10)
    q, _ = torch.linalg.qr(torch.randn(96, 96, generator=g))
    a = torch.zeros(96, 384)
    a[:, :40] = q[:, 10:50] * 1e-3
    u, s, vh = linalg.svd(a)
    assert torch.isfinite(u).all() and torch.isfinite(vh).all() and _orthonormal_cols(u)
    assert int((s > 1e-6).sum()) == 40


@pytest.mark.parametrize("n", [13, 3, 1])
def test_gram_is_exact_and_symmetric(n: int) -> None:
    a = torch.randn(40, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    g = linalg.gram(a)
    assert torch.equal(g, g.T) and torch.allclose(g, a.T @ a, atol=1e-12)


def _smooth(m: int, n: int, seed: int, decay: float = 0.99) -> torch.Tensor:
    """Random orthogonal factors, σi = decay^i: κ ≈ 1/decay^(r-1)."""
    return decaying(m, n, torch.Generator().manual_seed(seed), 1.0, decay)


@pytest.mark.parametrize("shape", [(240, 80), (80, 240)])
def test_fast_svd_gram_route_matches_lapack(shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    a = _smooth(*shape, seed=12)  # κ ≈ 2.2: the Gram route
    monkeypatch.setattr(linalg, "svd", lambda x: pytest.fail("took the LAPACK route"))
    u, s, vh = linalg.fast_svd(a)
    r = min(shape)
    assert u.shape == (shape[0], r) and vh.shape == (r, shape[1])
    assert torch.allclose(u.T @ u, torch.eye(r), atol=1e-5) and torch.allclose(vh @ vh.T, torch.eye(r), atol=1e-5)
    assert torch.allclose(s.double(), torch.linalg.svdvals(a.double()), rtol=1e-5)
    assert torch.allclose((u * s) @ vh, a, atol=1e-5)


@pytest.mark.parametrize("a", [_smooth(240, 80, seed=13, decay=0.9),  # κ ≈ 4e3: Gram refused
                               _smooth(90, 80, seed=14),  # square-ish
                               torch.zeros(60, 20)])
def test_fast_svd_falls_back_to_svd(a: torch.Tensor) -> None:
    u, s, vh = linalg.fast_svd(a)
    ur, sr, vhr = linalg.svd(a)
    assert torch.equal(s, sr) and torch.equal(u, ur) and torch.equal(vh, vhr)


def _spd(n: int, eigenvalues: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return ((q * eigenvalues) @ q.T).float(), q


def _subspace_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a @ a.T - b @ b.T).norm())


def test_top_eigh_krylov_path_equals_eigh(monkeypatch: pytest.MonkeyPatch) -> None:
    n, s = 400, 6
    m, q = _spd(n, 0.98 ** torch.arange(n, dtype=torch.float64), seed=15)  # 2% gaps, like residual Grams
    blocks = []
    real = linalg._ritz
    monkeypatch.setattr(linalg, "_ritz", lambda b, i, k: blocks.append(b.shape[-1]) or real(b, i, k))
    monkeypatch.setattr(torch.linalg, "eigh", _no_full_eigh(torch.linalg.eigh, n))
    lam, w = linalg.top_eigh(m, s)
    assert lam.shape == (s,) and w.shape == (n, s)
    assert torch.allclose(lam.double(), 0.98 ** torch.arange(s, dtype=torch.float64), rtol=1e-5)
    assert _subspace_gap(w, q[:, :s]) < 1e-4
    cold = blocks[-1]
    lam2, w2 = linalg.top_eigh(m, s, start=w)  # warm start: accepted at the early check
    assert blocks[-1] < cold and _subspace_gap(w2, q[:, :s]) < 1e-4


def _no_full_eigh(real, n: int):
    def eigh(a: torch.Tensor, *args, **kwargs):
        if a.shape[-1] == n:
            pytest.fail("fell back to a full eigh")
        return real(a, *args, **kwargs)
    return eigh


def test_top_eigh_falls_back_when_the_gap_closes() -> None:
    n, s = 400, 6
    values = torch.ones(n, dtype=torch.float64)
    values[:s - 1] = 2.0  # λ_s = λ_(s+1): the top-s subspace is not unique, Krylov never certifies it
    m, _ = _spd(n, values, seed=16)
    lam, w = linalg.top_eigh(m, s)
    ref = torch.linalg.eigh(m)[0].flip(0)[:s]
    assert torch.allclose(lam, ref, atol=1e-5) and torch.allclose(w.T @ w, torch.eye(s), atol=1e-5)


@pytest.mark.parametrize("s", [0, 3, 40])
def test_top_eigh_small_problems_use_eigh(s: int) -> None:
    m, q = _spd(40, 0.9 ** torch.arange(40, dtype=torch.float64), seed=17)
    lam, w = linalg.top_eigh(m, s)
    assert lam.shape == (s,) and w.shape == (40, s)
    if s:
        assert _subspace_gap(w, q[:, :s]) < 1e-4


@pytest.mark.parametrize("eps", [1e-1, 1e-3])
def test_polar_extended_is_accurate_when_ill_conditioned_and_q_is_imperfect(eps: float) -> None:
    """x nearly inside span(q) (κ([q | x]) ≈ 1e2 … 1e4) and q orthonormal only to 1e-5, like the
    Gram-route factors: the factor stays within 1e-4 of float64's. (The float64 correction and
    the leak fix are pinned by the tests named in docs/engine.md, Tolerances; this input
    passes without them.)"""
    g = torch.Generator().manual_seed(21)
    q, _ = torch.linalg.qr(torch.randn(300, 80, generator=g, dtype=torch.float64))
    q = (q + 1e-5 * torch.randn(300, 80, generator=g, dtype=torch.float64)).float()
    x = (q.double() @ torch.randn(80, 20, generator=g, dtype=torch.float64)
         + eps * torch.randn(300, 20, generator=g, dtype=torch.float64)).float()
    u, s, vh = torch.linalg.svd(torch.cat([q, x], 1).double(), full_matrices=False)
    assert float(s[0] / s[-1]) > 0.1 / eps  # really ill-conditioned
    assert float((linalg.polar_extended(q, x).double() - u @ vh).abs().max()) < 1e-4


def _defect(q: torch.Tensor) -> float:
    """‖QᵀQ − I‖₂ in float64 (columns of a tall or square Q)."""
    q = q.double()
    return float(torch.linalg.matrix_norm(q.T @ q - torch.eye(q.shape[1], dtype=torch.float64), 2))


@pytest.mark.parametrize("kappa", [30.0, 3e3])
def test_conditioned_polar_takes_newton_on_square_input_within_its_cap(kappa: float) -> None:
    """Square float32 input: Newton's iteration answers when κ ≤ max_cond (the polar factor of
    float64 to float32 accuracy, orthonormal to the last bits after the extra Newton–Schulz
    step), and None above the cap."""
    n = 80
    a = _square(n, torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), n, dtype=torch.float64), seed=11)
    u, _, vh = torch.linalg.svd(a.double())
    q = linalg.conditioned_polar(a, 1e5)
    assert q is not None and q.dtype == torch.float32
    assert float((q.double() - u @ vh).norm() / (u @ vh).norm()) < 1e-5
    assert _defect(q) < 2e-6
    assert linalg.conditioned_polar(a, kappa / 10) is None


def test_polar_extended_takes_the_whole_stack_when_x_is_wide_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """l ≥ k/3: a well-conditioned stack is polarized whole (Newton when square, the Gram route
    when tall); beyond STACK_MAX_COND the extended route answers. Every answer is the float64
    polar factor of the stack and orthonormal to a few 1e-6 (a flattened spectrum shows any defect)."""
    g = torch.Generator().manual_seed(12)
    real, whole = linalg.conditioned_polar, []

    def spy(a: torch.Tensor, max_cond: float) -> torch.Tensor | None:
        got = real(a, max_cond)
        whole.append(got is not None)
        return got

    monkeypatch.setattr(linalg, "conditioned_polar", spy)
    q = torch.linalg.qr(torch.randn(90, 45, generator=g))[0]  # (p, k)
    square_x = torch.randn(90, 45, generator=g) / 90 ** 0.5  # [q | x] square, κ ~ 10
    tall_x = torch.randn(90, 15, generator=g) / 90 ** 0.5  # (90, 60): m < 2n, square-ish: extended
    q_thin = q[:, :20]
    thin_x = torch.randn(90, 10, generator=g) / 90 ** 0.5  # (90, 30): the Gram route
    spectrum = torch.ones(45, dtype=torch.float64)
    spectrum[-1] = 1e-7
    near = (q.double() @ torch.randn(45, 45, generator=g, dtype=torch.float64)).float()
    near_x = near + (torch.linalg.qr(torch.randn(90, 45, generator=g))[0] @ torch.diag(spectrum.float())) * 1e-6
    for qq, x, expect in ((q, square_x, True), (q, tall_x, False), (q_thin, thin_x, True), (q, near_x, False)):
        whole.clear()
        got = linalg.polar_extended(qq, x)
        stack = torch.cat([qq, x], 1).double()
        u, s, vh = torch.linalg.svd(stack, full_matrices=False)
        assert (whole == [True]) == expect, (tuple(x.shape), whole)
        assert _defect(got) < 5e-6, (tuple(x.shape), _defect(got))
        if float(s[0] / s[-1]) < 1e5:  # a unique, well-defined factor to compare with
            assert float((got.double() - u @ vh).norm() / (u @ vh).norm()) < 1e-5


def test_polar_extended_applies_ill_conditioned_corrections_in_float64() -> None:
    """x inside span(q) but for a 1e-2 part (κ([q | x]) ≈ 1e4, l < k/3: the extended route): the
    κ-sized correction is applied in float64 (FLOAT32_APPLY_ABOVE), so the factor stays
    orthonormal to float32 precision. Applied in float32 it is off by ~2e-4."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(200, 60, generator=g, dtype=torch.float64))[0]  # (p, k)
    outside = torch.linalg.qr(torch.randn(200, 10, generator=g, dtype=torch.float64))[0]
    outside = torch.linalg.qr(outside - q @ (q.T @ outside))[0]  # (p, l), ⟂ q
    x = q @ torch.randn(60, 10, generator=g, dtype=torch.float64) + 1e-2 * outside
    s = torch.linalg.svdvals(torch.cat([q, x], 1))
    assert float(s[0] / s[-1]) > 5e3 and float(s[-1] / s[0]) ** 2 < linalg.FLOAT32_APPLY_ABOVE
    got = linalg.polar_extended(q.float(), x.float())
    assert _defect(got) < 5e-6
