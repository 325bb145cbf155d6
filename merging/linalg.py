"""Robust linear-algebra kernels for the spectral merge methods.

Every kernel accepts tall, wide, square, rank-deficient and all-zero matrices and returns
finite output, or raises ``NonFiniteError`` naming the problem. A plain float32 SVD fails to
converge on some wide Iso-CTS residuals (docs/engine.md, Measured), so ``svd`` walks a fallback chain:

1. LAPACK on the tall orientation (wide inputs are transposed: it is also ~3× faster);
2. the same in float64;
3. a Householder QR first, then the SVD of the small triangular factor, in float64;
4. the eigendecomposition of the float64 Gram matrix (never fails), with an orthonormal
   completion of the left vectors of zero singular values.

``polar`` returns the orthogonal polar factor U⊥ = P Qᵀ of A = P D Qᵀ (Higham, *Functions of
Matrices*, ch. 8); for well-conditioned elongated inputs it is computed from one eigh of the
small Gram matrix, AᵀA = W Λ Wᵀ ⇒ U⊥ = A W Λ^{-1/2} Wᵀ, and from the SVD otherwise.
The fast kernels the spectral methods are built from:
- ``gram``: AᵀA from its upper panels (5/8 of a GEMM's flops), exactly symmetric;
- ``fast_svd``: a thin SVD from the Gram eigh when well conditioned (sums of task matrices);
- ``top_svd``: the top-k triplets from the small-side Gram (TSV-M, CART, Iso-CTS tails);
- ``largest_eigh``: top-k eigenpairs, by LAPACK's subset solver when k is a small share of n;
- ``top_eigh``: top-s eigenpairs of a batch of PSD matrices by block Krylov (Golub & Van
  Loan, *Matrix Computations*, §10.3), warm-startable, with an eigh fallback;
- ``polar_extended``: polar([orthonormal block | extra columns]) with one small eigh.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from merging import routes
from merging.errors import NonFiniteError
from merging.tensors import all_finite as _all_finite

log = logging.getLogger(__name__)

SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# The Gram routes (``polar``, ``fast_svd``) are taken only up to these condition numbers: the
# Gram squares κ (measured in float32 on 3072×768: κ 10 → 3e-6 like a float32 SVD; κ 30 → 2e-5;
# κ 100 → 2e-4); float64 keeps ~ε64·κ² ≈ 1e-8 at κ = 1e4.
GRAM_MAX_COND = {torch.float32: 20.0, torch.float64: 1e4}


def _check_finite(a: torch.Tensor, what: str) -> None:
    if not _all_finite(a):
        raise NonFiniteError(f"{what}: input matrix {tuple(a.shape)} holds NaN/Inf values")


def _finite(*tensors: torch.Tensor) -> bool:
    return all(_all_finite(t) for t in tensors)


def _lapack(a: torch.Tensor) -> SVD:  # a (m, n), m ≥ n
    return torch.linalg.svd(a, full_matrices=False)


def _lapack64(a: torch.Tensor) -> SVD:
    return _lapack(a.double())


def _qr_then_svd(a: torch.Tensor) -> SVD:
    q, r = torch.linalg.qr(a.double())  # (m, n), (n, n)
    u, s, vh = torch.linalg.svd(r)
    return q @ u, s, vh


def _complete(u: torch.Tensor, good: int) -> torch.Tensor:
    """Replace columns ``good:`` of ``u`` (m, r) by an orthonormal completion of ``u[:, :good]``."""
    m, r = u.shape
    if good >= r:
        return u
    gen = torch.Generator(device="cpu").manual_seed(0)
    filler = torch.randn(m, r - good, generator=gen, dtype=u.dtype).to(u.device)
    q, rr = torch.linalg.qr(torch.cat([u[:, :good], filler], dim=1))  # (m, r)
    signs = torch.sign(torch.diagonal(rr)[:good])
    signs[signs == 0] = 1
    q[:, :good] = q[:, :good] * signs
    return q


# σ_i/σ_1 below which the float64 Gram route calls a singular value zero and completes its left
# vector: the Gram squares the condition number, so eigenvalues under ~n·ε64·λ1 are rounding and
# their vectors a·w/σ are not orthogonal (a float32 rank-2 matrix has σ ≈ 2e-8·σ1 of rounding).
GRAM_SVD_MIN_RATIO = 1e-6


def _gram_svd(a: torch.Tensor) -> SVD:
    """Thin SVD from the float64 Gram eigendecomposition (eigh does not fail to converge)."""
    a64 = a.double()  # (m, n)
    lam, w = torch.linalg.eigh(gram(a64))  # ascending (n,), (n, n)
    lam, w = lam.flip(0).clamp_min(0), w.flip(1)
    s = lam.sqrt()  # (n,)
    good = int((s > s[0] * GRAM_SVD_MIN_RATIO).sum()) if s.numel() and s[0] > 0 else 0
    u = torch.zeros_like(a64)
    u[:, :good] = (a64 @ w[:, :good]) / s[:good]
    return _complete(u, good), s, w.T


FALLBACKS: tuple[tuple[str, Callable[[torch.Tensor], SVD]], ...] = (
    ("lapack", _lapack),
    ("lapack-float64", _lapack64),
    ("qr-then-svd-float64", _qr_then_svd),
    ("gram-eigh-float64", _gram_svd),
)


def _zero_svd(a: torch.Tensor) -> SVD:
    m, n = a.shape
    r = min(m, n)
    eye = torch.eye(max(m, n), dtype=a.dtype, device=a.device)
    return eye[:m, :r].clone(), torch.zeros(r, dtype=a.dtype, device=a.device), eye[:r, :n].clone()


def _tall_svd(a: torch.Tensor) -> SVD:
    """Thin SVD of a tall (m ≥ n) matrix through the fallback chain, in ``a``'s dtype."""
    for name, kernel in FALLBACKS:
        try:
            u, s, vh = kernel(a)
        except (RuntimeError, ValueError) as err:  # torch.linalg.LinAlgError is a RuntimeError
            log.info("svd %s failed on %s (%s); trying the next kernel", name, tuple(a.shape), err)
            continue
        if _finite(u, s, vh):
            if name != "lapack":
                log.info("svd of %s %s succeeded with %s", tuple(a.shape), a.dtype, name)
            routes.taken(routes.FULL_SVD if name == "lapack" else f"{routes.FULL_SVD} ({name})")
            return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)
        log.info("svd %s returned non-finite values on %s; trying the next kernel", name, tuple(a.shape))
    raise NonFiniteError(f"SVD of a {tuple(a.shape)} matrix failed with every kernel")  # pragma: no cover


def svd(a: torch.Tensor) -> SVD:
    """Thin SVD ``a = U diag(S) Vh``: U (m, r), S (r,) descending, Vh (r, n), r = min(m, n)."""
    _check_finite(a, "svd")
    if a.numel() == 0 or not bool(a.any()):
        return _zero_svd(a)
    if a.shape[0] < a.shape[1]:
        u, s, vh = _tall_svd(a.T)
        return vh.T, s, u.T
    return _tall_svd(a)


def singular_values(a: torch.Tensor) -> torch.Tensor:
    """Singular values of ``a`` (r,), descending, with the same fallbacks as ``svd``."""
    _check_finite(a, "singular_values")
    tall = a.T.contiguous() if a.shape[0] < a.shape[1] else a  # LAPACK is ~2× slower on a transposed view
    if a.numel() and bool(a.any()):
        try:
            s = torch.linalg.svdvals(tall)
            if _finite(s):
                return s
        except RuntimeError as err:
            log.info("svdvals failed on %s (%s); using the robust svd", tuple(a.shape), err)
    return svd(a)[1]


def truncated_svd(a: torch.Tensor, rank: int) -> SVD:
    """The top-``rank`` singular triplets of ``a``: U (m, k), S (k,), Vh (k, n), k = min(rank, r)."""
    u, s, vh = svd(a)
    return u[:, :rank], s[:rank], vh[:rank]


GRAM_PANELS = 4  # column panels of ``gram`` (timings in docs/engine.md, Timings)


def gram(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """AᵀA (n, n) for ``a`` (m, n), exactly symmetric, computing only the upper panels: panel i
    is A[:, i]ᵀ A[:, i:], mirrored below (5/8 of a GEMM's flops with 4 panels; each diagonal block's
upper half is mirrored too, so the result is exactly symmetric whatever the BLAS). Written into
    ``out`` when given."""
    n = a.shape[1]
    edges = [round(i * n / GRAM_PANELS) for i in range(GRAM_PANELS + 1)]
    out = a.new_empty(n, n) if out is None else out
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            panel = a[:, lo:hi].T @ a[:, lo:]  # (hi−lo, n−lo)
            out[lo:hi, lo:] = panel
            out[hi:, lo:hi] = panel[:, hi - lo:].T
            block = out[lo:hi, lo:hi]  # a GEMM need not return AᵢᵀAᵢ bit-symmetric: mirror its upper half
            block.copy_(block.triu() + block.triu(1).T)
    return out


def _gram_eigh(tall: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(λ (n,) ascending, W (n, n)) of the Gram AᵀA of a float32/float64 ``tall`` (m ≥ 2n), in
    its dtype; None when κ(A) > GRAM_MAX_COND (the Gram would lose accuracy), when eigh fails,
    or for square-ish inputs: there a refused attempt would cost 40% of the SVD it precedes,
    and the real square sums (out_proj) are far beyond κ = 20."""
    max_cond = GRAM_MAX_COND.get(tall.dtype)
    if max_cond is None or tall.numel() == 0 or tall.shape[0] < 2 * tall.shape[1]:
        return None
    try:
        lam, w = torch.linalg.eigh(gram(tall))  # ascending (n,), (n, n)
    except RuntimeError:
        return None
    if not _finite(lam, w) or lam[-1] <= 0 or lam[0] < lam[-1] / max_cond ** 2:
        routes.taken(f"{routes.GRAM_EIGH} refused")
        return None
    routes.taken(routes.GRAM_EIGH)
    return lam, w


def _gram_polar(a: torch.Tensor, scaled: bool = False, max_cond: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(polar factor, singular values descending) of an elongated ``a`` from one eigh of its
    small-side Gram: tall AᵀA = W Λ Wᵀ ⇒ U⊥ = A · W Λ^{-1/2} Wᵀ, wide U⊥ = (AAᵀ)^{-1/2} · A
    (contiguous either way). ``scaled`` multiplies the factor by the mean singular value
    inside the small matrix (Iso-C's Δ, without another pass over the output). None when
    ``_gram_eigh`` refuses (κ(A) above GRAM_MAX_COND, or ``a`` square-ish) or κ(A) exceeds
    ``max_cond``."""
    wide = a.shape[0] < a.shape[1]
    got = _gram_eigh(a.T if wide else a)
    if got is None or (max_cond is not None and got[0][0] * max_cond ** 2 < got[0][-1]):
        return None
    lam, w = got  # ascending: the product below does not depend on the order
    s = lam.sqrt()  # (n,)
    p = gram((w * s.rsqrt()).T)  # W Λ^{-1/2} Wᵀ (n, n), n the small side
    if scaled:
        p.mul_(s.mean())
    return (p @ a if wide else a @ p), s.flip(0)


def fast_svd(a: torch.Tensor) -> SVD:
    """Thin SVD like ``svd``, from one float32 eigh of the small-side Gram when ``a`` is float32
    and well conditioned (κ ≤ GRAM_MAX_COND): tall A = (A W Λ^{-1/2}) Λ^{1/2} Wᵀ, and a
    wide A gets exact orthonormal left vectors W. 2–3× faster than LAPACK on 3072×768; the
    factors are orthonormal to ~ε·κ² (≤ 3e-5). Anything else goes through ``svd``."""
    _check_finite(a, "fast_svd")
    wide = a.shape[0] < a.shape[1]
    tall = a.T if wide else a
    got = _gram_eigh(tall) if a.dtype == torch.float32 else None
    if got is None:
        return svd(a)
    lam, w = got[0].flip(0), got[1].flip(1)  # descending
    s = lam.sqrt()  # (n,)
    u = torch.mm(tall, w).div_(s)  # (m, n)
    return (w, s, u.T) if wide else (u, s, w.T)


def _polar_values(a: torch.Tensor, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(polar factor, singular values descending) of ``a``, already checked finite: the Gram
    route, else the SVD; ``scaled`` as in ``_gram_polar``. For a wide ``a`` the factor has
    orthonormal rows; rank-deficient inputs get some valid completion (it is not unique)."""
    fast = _gram_polar(a, scaled)  # None for all-zero input (λ_max = 0): the SVD route handles it
    if fast is not None:
        return fast
    u, s, vh = svd(a)  # (m, r), (r,), (r, n)
    return (u * s.mean() if scaled else u) @ vh, s


# Newton's polar iteration (square float32 inputs) is taken up to this estimated κ: measured
# on 512² matrices with geometric, clustered and single-gap spectra, its error stays within
# 1.5× of a float32 LAPACK SVD's up to κ = 1e7 (κ = 1e4: 7e-5 against 5e-5; κ = 1e6: 2e-3
# against 1e-2), and beyond 1/ε32 the inverses are noise. Newton stops once the singular
# values lie in [1, 1 + NEWTON_TOL]; one Newton–Schulz step then leaves ≤ 1.5·NEWTON_TOL².
NEWTON_MAX_COND, NEWTON_TOL, NEWTON_MAX_STEPS = 1e6, 3e-3, 12
# After that step ‖QᵀQ − I‖₂ (= max |σ² − 1|, by power iteration) must be ≤ NEWTON_FLAT_TOL, else
# up to NEWTON_SCHULZ_EXTRA more steps: on a real 128² sum with κ = 3.5e3 the float32 inverses left
# σ_min below the predicted bound and the first step's answer was flat only to 1.2e-4.
NEWTON_FLAT_TOL, NEWTON_SCHULZ_EXTRA = 4e-6, 2


def _norm2_estimate(a: torch.Tensor, steps: int = 8) -> float:
    """‖a‖₂ from below by power iteration on aᵀa from a fixed start (a few GEMVs)."""
    v = a.new_ones(a.shape[1]) / a.shape[1] ** 0.5  # (n,)
    est = 0.0
    for _ in range(steps):
        w = a.T @ (a @ v)
        est = float(w.norm())
        if not 0 < est < float("inf"):
            return est
        v = w / est
    return est ** 0.5


def _newton_step(x: torch.Tensor, mu: float, inv: torch.Tensor | None = None) -> torch.Tensor:
    """(μX + (μX)^{-T})/2, from ``inv`` = X^{-1} when the caller has it; raises RuntimeError
    when X is exactly singular."""
    inv = torch.linalg.inv(x) if inv is None else inv
    return inv.T.mul(0.5 / mu).add_(x, alpha=0.5 * mu)  # (n, n)


def _newton_polar(a: torch.Tensor, max_cond: float = NEWTON_MAX_COND) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(polar factor, mean singular value) of a square float32 ``a`` by the scaled Newton
    iteration X ← (μX + (μX)^{-T})/2 (Higham, *Functions of Matrices*, §8.6) with Byers & Xu's
    scaling from power-iteration estimates α ≈ σ_max, β ≈ σ_min (SIAM J. Matrix Anal. Appl.
    30, 2008): μ₀ = 1/√(αβ), μ₁ = √(2√(αβ)/(α+β)), μ_{k+1} = √(2/(μ_k + 1/μ_k)). After the
    first step every singular value is ≥ 1 and their spread κ_k shrinks as
    κ_{k+1} = (√κ_k + 1/√κ_k)/2, so the iteration stops when the predicted κ_k and the measured
    ‖X_k‖₂ are both ≤ 1 + NEWTON_TOL: κ = 4e3 takes 4 inverses. One Newton–Schulz step X(3I − XᵀX)/2 finishes; σ̄ = tr(QᵀA)/n. None (the SVD route)
    when the estimated κ exceeds ``max_cond`` (at most NEWTON_MAX_COND), an inverse fails or
    it does not settle."""
    try:
        inv = torch.linalg.inv(a)  # (n, n)
    except RuntimeError:  # exactly singular
        return None
    alpha, inv_norm = _norm2_estimate(a), _norm2_estimate(inv)
    if not (_finite(inv) and alpha > 0 and 0 < inv_norm < float("inf")) or \
            alpha * inv_norm > min(max_cond, NEWTON_MAX_COND):
        return None
    beta = 1.0 / inv_norm
    mu = (alpha * beta) ** -0.5
    x = _newton_step(a, mu, inv)  # (n, n), singular values in [1, κ₁]
    spread, mu = _settle(alpha / beta), (2.0 * (alpha * beta) ** 0.5 / (alpha + beta)) ** 0.5
    for _ in range(NEWTON_MAX_STEPS):
        if spread <= 1 + NEWTON_TOL and _norm2_estimate(x) <= 1 + NEWTON_TOL:
            break
        try:
            x = _newton_step(x, mu)
        except RuntimeError:
            return None
        spread, mu = _settle(spread), (2.0 / (mu + 1.0 / mu)) ** 0.5
    else:
        return None
    q = _newton_schulz(x)
    for _ in range(NEWTON_SCHULZ_EXTRA):  # the stop predicts σ_min; rounding in the inverses can leave it lower
        g = gram(q)  # (n, n) QᵀQ
        if _norm2_estimate(g - torch.eye(g.shape[0], dtype=g.dtype, device=g.device)) <= NEWTON_FLAT_TOL:
            break
        q = _newton_schulz(q, g)
    if not _finite(q):
        return None
    routes.taken(routes.NEWTON)
    return q, (q * a).sum() / a.shape[0]


def _newton_schulz(x: torch.Tensor, xtx: torch.Tensor | None = None) -> torch.Tensor:
    """One Newton–Schulz step X(3I − XᵀX)/2 (rows for a wide X): singular values 1 + δ go to
    1 − 3δ²/2 + O(δ³), with the same polar factor. ``xtx``: XᵀX when the caller has it (tall or
    square X)."""
    if x.shape[0] < x.shape[1]:
        return _newton_schulz(x.T).T
    return x * 1.5 - (x @ (gram(x) if xtx is None else xtx)) * 0.5  # (m, n)


def _settle(spread: float) -> float:
    """The spread σ_max/σ_min after one optimally scaled Newton step: (√κ + 1/√κ)/2."""
    return (spread ** 0.5 + spread ** -0.5) / 2


def _takes_newton(a: torch.Tensor) -> bool:
    """Whether ``a`` is for ``_newton_polar``: square, non-empty, float32."""
    return a.dtype == torch.float32 and a.shape[0] == a.shape[1] and a.numel() > 0


def polar_with_mean(a: torch.Tensor, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthogonal polar factor of ``a`` and the mean of its singular values (a 0-d tensor);
    with ``scaled``, the factor comes already multiplied by the mean (``mean_scaled_polar``).
    Square float32 inputs take Newton's iteration (the mean is tr(QᵀA)/n); the rest take the
    Gram route or the SVD."""
    _check_finite(a, "polar")
    if _takes_newton(a):
        got = _newton_polar(a)
        if got is not None:
            return (got[0].mul_(got[1]) if scaled else got[0]), got[1]
    q, s = _polar_values(a, scaled)
    return q, s.mean()


def mean_scaled_polar(a: torch.Tensor) -> torch.Tensor:
    """σ̄ · polar(a), σ̄ the mean singular value: Iso-C's update of a summed task matrix."""
    return polar_with_mean(a, scaled=True)[0]


def conditioned_polar(a: torch.Tensor, max_cond: float) -> torch.Tensor | None:
    """polar(a) when κ(a) ≤ ``max_cond`` and a fast route applies, else None, without any SVD:
    for callers that have a better route for ill-conditioned input. Elongated ``a`` takes one
    eigh of its small Gram (which also stops at GRAM_MAX_COND), square float32 ``a`` Newton's
    iteration (which also stops at NEWTON_MAX_COND); square-ish ``a`` gets None. Either route
    decides from its first factorization, before any product with ``a``. A float32 answer gets
    one more Newton–Schulz step: both routes leave singular values up to ~1e-5 from 1
    (Newton's stop, the Gram's ε32·κ²), which would show in a flattened spectrum."""
    _check_finite(a, "polar")
    if _takes_newton(a):
        got = _newton_polar(a, max_cond)
    else:
        got = _gram_polar(a, max_cond=max_cond)
    if got is None:
        return None
    return _newton_schulz(got[0]) if a.dtype == torch.float32 else got[0]


def polar(a: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns (rows, if wide): U⊥ = P Qᵀ for A = P D Qᵀ."""
    return polar_with_mean(a)[0]


# Share of n up to which ``largest_eigh`` takes LAPACK's subset solver (syevr, through scipy) on
# the CPU: on 768², k = 96, 37 ms against 62 ms for the full eigh in float32 (76 against 123 ms
# in float64); at k = n/4 the two cost about the same, beyond it the full one is faster.
SUBSET_EIGH_MAX_SHARE = 0.25
# the subset solver's answer is taken when its residual ‖AW − WΛ‖ (relative to λ_max) and its
# orthonormality defect ‖WᵀW − I‖ are both within this (else the full eigh answers)
SUBSET_EIGH_TOL = 1e-4


def largest_eigh(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` eigenpairs of the symmetric ``a`` (n, n): λ (k,) descending, W (n, k), in
    ``a``'s dtype; RuntimeError when LAPACK fails, as ``torch.linalg.eigh``. A small share of the
    spectrum on the CPU comes from the subset solver (no full tridiagonal eigendecomposition), the
    rest from ``torch.linalg.eigh``, which also answers whenever the subset solver's answer does not
    check out (it can return nothing at all where a cluster of equal eigenvalues straddles k)."""
    n = a.shape[-1]
    k = max(0, min(k, n))
    if a.device.type == "cpu" and 0 < k <= SUBSET_EIGH_MAX_SHARE * n and _all_finite(a):
        got = _subset_eigh(a, k)
        if got is not None:
            routes.taken(routes.SUBSET_EIGH)
            return got
    lam, w = torch.linalg.eigh(a)  # ascending (n,), (n, n)
    routes.taken(routes.FULL_EIGH)
    return lam.flip(0)[:k], w.flip(1)[:, :k]


@functools.cache
def _one_scipy_blas_thread() -> None:
    """Limit the OpenBLAS that scipy and numpy loaded (not torch's own BLAS) to one thread, once
    per process (threadpoolctl; never restored, so concurrent sessions never change it under a
    running call). The subset solver's tridiagonal reduction gains 6% from a second thread on
    768², but idle OpenBLAS threads then spin against torch's OpenMP threads in the products that
    follow: TSV-M on a 768² and a 3072×768 layer (T = 8, 2 cores) took 2.03 s with scipy's default
    threads and 1.30 s with one (Iso-CTS 0.89 → 0.74 s). Nothing else here runs BLAS in scipy or
    numpy."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas", prefix="libscipy_openblas").limit(limits=1)


def _subset_eigh(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``largest_eigh`` by scipy's syevr (CPU, finite ``a``), or None unless it returned k orthonormal
    eigenpairs with residuals ‖AW − WΛ‖ within SUBSET_EIGH_TOL of λ_max (the full eigh then answers)."""
    from scipy.linalg import LinAlgError, eigh

    n = a.shape[-1]
    try:
        _one_scipy_blas_thread()
        lam, w = eigh(a.detach().numpy(), subset_by_index=[n - k, n - 1], driver="evr", check_finite=False)
    except (LinAlgError, ValueError):
        return None
    if lam.shape != (k,) or w.shape != (n, k):
        return None
    lam = torch.from_numpy(lam[::-1].copy()).to(a.dtype)  # (k,) descending
    w = torch.from_numpy(w[:, ::-1].copy()).to(a.dtype)  # (n, k)
    scale = float(lam.abs().max())
    eye = torch.eye(k, dtype=a.dtype)
    if not (_finite(lam, w) and float((a @ w - w * lam).abs().max()) <= SUBSET_EIGH_TOL * scale
            and float((w.T @ w - eye).abs().max()) <= SUBSET_EIGH_TOL):
        return None
    return lam, w


def _gram_top(a: torch.Tensor, rank: int, dtype: torch.dtype, min_ratio: float) -> SVD | None:
    """Top-``rank`` triplets of a tall ``a`` from the eigh of its Gram in ``dtype``; None when
    σ_rank/σ_1 < ``min_ratio`` (the Gram would have lost those directions)."""
    x = a.to(dtype)  # (m, n)
    try:
        lam, w = largest_eigh(gram(x), rank)  # (k,), (n, k), descending
    except RuntimeError:
        return None
    if not _finite(lam, w) or not gram_resolves(lam, min_ratio):
        return None
    s = lam.sqrt()  # (k,)
    u = (x @ w) / s  # (m, k)
    return u.to(a.dtype), s.to(a.dtype), w.T.to(a.dtype)


def gram_resolves(lam: torch.Tensor, min_ratio: float) -> bool:
    """Whether a Gram's top eigenvalues ``lam`` (k,), descending, resolve its top-k space in
    the Gram's dtype: λ_1 > 0 and σ_k/σ_1 = √(λ_k/λ_1) ≥ ``min_ratio`` (below, the directions
    near the boundary are rounding; rank-deficient blocks land there too)."""
    return bool(lam[0] > 0) and bool(lam[-1] >= min_ratio ** 2 * lam[0])


# (dtype, smallest σ_k/σ_1 it resolves to ~1e-4 relative accuracy)
FLOAT32_GRAM_MIN_RATIO = 0.1
FLOAT64_GRAM_MIN_RATIO = 1e-5
GRAM_TOP_KERNELS = ((torch.float32, FLOAT32_GRAM_MIN_RATIO), (torch.float64, FLOAT64_GRAM_MIN_RATIO))


def top_svd(a: torch.Tensor, rank: int) -> SVD:
    """The top-``rank`` singular triplets of ``a``: U (m, k), S (k,), Vh (k, n), k = min(rank, r).

    When ``rank`` is at most half of r, they come from the eigh of the small-side Gram (float32
    if σ_k/σ_1 ≥ 0.1, else float64), else from the full robust ``svd``."""
    _check_finite(a, "top_svd")
    r = min(a.shape)
    rank = max(0, min(rank, r))
    if 2 * rank <= r and rank > 0 and bool(a.any()):
        wide = a.shape[0] < a.shape[1]
        tall = a.T if wide else a
        for dtype, ratio in GRAM_TOP_KERNELS:
            if dtype == torch.float64 or a.dtype == torch.float32:
                got = _gram_top(tall, rank, dtype, ratio)
                if got is not None:
                    u, s, vh = got
                    return (vh.T, s, u.T) if wide else (u, s, vh)
    return truncated_svd(a, rank)


# top_eigh's block Krylov: block width s + KRYLOV_PAD (at least KRYLOV_MIN_WIDTH), a
# Rayleigh–Ritz check after these many blocks, accepted when the Davis–Kahan estimate
# ‖R‖_F / (θ_s − θ_{s+1}) of the Ritz subspace error is ≤ KRYLOV_TOL (measured on Iso-CTS
# residual Grams, 768², s = 19: 13 blocks give a subspace error of ~1e-5; timings in
# docs/engine.md, Timings).
KRYLOV_PAD, KRYLOV_CHECKS, KRYLOV_TOL = 1, (13, 16), 1e-3
KRYLOV_WARM_CHECK = 4  # an extra early check when warm-started
KRYLOV_MIN_WIDTH = 8  # narrower blocks build too small a space in 13 blocks
# breakdown: a Ritz basis off orthonormal by more than KRYLOV_DEFECT_TOL, or a QR pivot below
# KRYLOV_PIVOT_TOL of the block's largest entry (the block is then re-orthonormalized)
KRYLOV_DEFECT_TOL, KRYLOV_PIVOT_TOL = 1e-4, 1e-3


def top_eigh(m: torch.Tensor, s: int, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``s`` eigenpairs of symmetric PSD matrices ``m`` (..., n, n): λ (..., s)
    descending, W (..., n, s).

    Block Krylov (block Lanczos with full reorthogonalization, then Rayleigh–Ritz), batched
    over the leading dimension, when the Krylov space stays under n/2; ``start`` (..., n, j)
    seeds the first block (a sweep passes the previous vectors, which then converge in a few
    blocks). Matrices whose error estimate does not reach KRYLOV_TOL are solved directly
    (``largest_eigh``)."""
    batch = m.reshape(-1, *m.shape[-2:])  # (B, n, n)
    n = batch.shape[-1]
    s = max(0, min(s, n))
    lam, w = batch.new_zeros(batch.shape[0], s), batch.new_zeros(batch.shape[0], n, s)
    todo = list(range(batch.shape[0]))
    width = max(s + KRYLOV_PAD, KRYLOV_MIN_WIDTH)
    if s and todo and width * (KRYLOV_CHECKS[-1] + 1) <= n // 2:
        seed = None if start is None else start.reshape(-1, n, start.shape[-1])
        theta, x, ok = _krylov_top(batch, s, width, seed)
        lam[ok], w[ok] = theta[ok], x[ok]
        todo = [i for i in todo if not bool(ok[i])]
        for _ in range(int(ok.sum())):
            routes.taken(routes.KRYLOV)
    for i in todo:
        lam[i], w[i] = largest_eigh(batch[i], s)
    return lam.reshape(*m.shape[:-2], s), w.reshape(*m.shape[:-2], n, s)


def _first_block(m: torch.Tensor, width: int, start: torch.Tensor | None) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    block = torch.randn(m.shape[0], m.shape[1], width, generator=gen, dtype=m.dtype).to(m.device)  # (B, n, b)
    if start is not None:
        j = min(start.shape[-1], width)
        block[:, :, :j] = start[:, :, :j].to(m.dtype)
    return torch.linalg.qr(block)[0]


def _krylov_top(m: torch.Tensor, s: int, width: int, start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(θ (B, s), X (B, n, s), accepted (B,)) for the batch ``m`` (B, n, n)."""
    last = KRYLOV_CHECKS[-1]
    checks = KRYLOV_CHECKS if start is None else (KRYLOV_WARM_CHECK, *KRYLOV_CHECKS)
    basis = m.new_empty(m.shape[0], m.shape[1], width * last)  # orthonormal columns, block by block
    images = torch.empty_like(basis)  # M · basis
    basis[:, :, :width] = _first_block(m, width, start)
    theta, x = m.new_zeros(m.shape[0], s), m.new_zeros(m.shape[0], m.shape[1], s)
    ok = torch.zeros(m.shape[0], dtype=torch.bool)
    for blocks in range(1, last + 1):
        cols = width * blocks
        torch.bmm(m, basis[:, :, cols - width:cols], out=images[:, :, cols - width:cols])
        if blocks in checks:
            t, v, good = _ritz(basis[:, :, :cols], images[:, :, :cols], s)
            new = good & ~ok
            theta[new], x[new], ok = t[new], v[new], ok | good
            if bool(ok.all()) or blocks == last:
                break
        basis[:, :, cols:cols + width] = _next_block(basis[:, :, :cols], images[:, :, cols - width:cols])
    return theta, x, ok


def _next_block(basis: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``z`` (B, n, b) minus its part in span(``basis``): classical
    Gram–Schmidt twice ("twice is enough"), and once more when ``z`` nearly lay in the span."""
    for _ in range(2):
        z = z - basis @ (basis.mT @ z)
    q, r = torch.linalg.qr(z)  # (B, n, b), (B, b, b)
    diag = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    if bool((diag.amin(-1) < KRYLOV_PIVOT_TOL * r.abs().amax((-2, -1))).any()):
        q = torch.linalg.qr(q - basis @ (basis.mT @ q))[0]  # breakdown: q is partly noise
    return q


def _ritz(basis: torch.Tensor, images: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``s`` Ritz pairs of each M over span(basis): (θ (B, s), X (B, n, s), accepted (B,)),
    accepted where the error estimate is below KRYLOV_TOL."""
    h = basis.mT @ images  # (B, p, p)
    theta, y = torch.linalg.eigh((h + h.mT) / 2)
    theta, y = theta.flip(-1)[:, :s + 1], y.flip(-1)[:, :, :s]  # (B, s+1), (B, p, s)
    x = basis @ y  # (B, n, s)
    resid = torch.linalg.matrix_norm(images @ y - x * theta[:, None, :s])  # (B,)
    gap = theta[:, s - 1] - theta[:, s]
    eye = torch.eye(s, dtype=x.dtype, device=x.device)
    defect = (x.mT @ x - eye).abs().amax((-2, -1))
    good = (gap > 0) & (resid <= KRYLOV_TOL * gap) & (defect < KRYLOV_DEFECT_TOL)
    good &= torch.isfinite(theta).all(-1) & torch.isfinite(x).all(-1).all(-1)
    return theta[:, :s].clamp_min(0), x, good.cpu()


# λ_min/λ_max of H (= 1/κ([q | x])²) below which polar_extended applies its correction in
# float64: float32 products would leave an orthonormality defect of ~ε32·κ (κ = 30: 2e-6).
FLOAT32_APPLY_ABOVE = 1e-3
# λ_min/λ_max of H below which [q | x] counts as numerically singular: the SVD polar answers
EXTENDED_RANK_CUT = 1e-10


def _extended(c: torch.Tensor, r_perp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q_C (k, l'), Φ = H^{-1/2} − I, λ(H)) for ``polar_extended`` from C = qᵀx (k, l) and the
    triangular factor R⊥ (l, l) of x's part outside span(q); float64 (small matrices)."""
    c, r_perp = c.double(), r_perp.double()
    qc, rc = torch.linalg.qr(c)  # (k, l'), (l', l)
    lp, l = qc.shape[1], c.shape[1]
    eye = torch.eye(lp, dtype=torch.float64, device=c.device)
    inner = rc.T @ rc + r_perp.T @ r_perp  # = xᵀx, without a difference of Grams
    h = torch.cat([torch.cat([eye, rc], 1), torch.cat([rc.T, inner], 1)], 0)  # (l'+l, l'+l)
    lam, w = torch.linalg.eigh(h)
    lam = lam.clamp_min(torch.finfo(torch.float64).tiny)
    phi = (w * lam.rsqrt()) @ w.T - torch.eye(lp + l, dtype=torch.float64, device=c.device)
    return qc, phi, lam


def _apply_extended(q: torch.Tensor, x: torch.Tensor, qc: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """[q | x] (TᵀT)^{-1/2} = [q | x] + [q Q_C | x] Φ [Q_C | I]ᵀ, in the dtype of ``q``."""
    k, lp = q.shape[1], qc.shape[1]
    qc, phi = qc.to(q.dtype), phi.to(q.dtype)
    corr = torch.cat([q @ qc, x], 1) @ phi  # (p, l'+l)
    out = torch.cat([q, x], 1)  # (p, k+l)
    out[:, :k].addmm_(corr[:, :lp], qc.T)
    out[:, k:] += corr[:, lp:]
    return out


# polar_extended's own work (two QRs of (p, l), a float64 eigh of ≤ 2l rows) beats a polar of
# the whole (p, k + l) stack only while l is small against k (measured on the stacks of an
# Iso-CTS sweep, 768² and 3072×768: docs/engine.md, Timings). So from l ≥ STACK_FROM·k a float32 stack first tries
# ``conditioned_polar`` itself, taken when κ ≤ STACK_MAX_COND (the Gram route stops at 20
# anyway; Newton measured 1e-5 from the float64 factor at κ ≈ 1e4, the extended route 1e-6).
STACK_FROM, STACK_MAX_COND = 1 / 3, 1e5


def polar_extended(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """polar([q | x]) for ``q`` (p, k) with orthonormal columns and ``x`` (p, l), k + l ≤ p.

    Write x = q C + Q⊥ R⊥ with C = qᵀx and Q⊥ R⊥ the QR of x's part outside span(q)
    (Gram–Schmidt twice, then Q⊥ projected off q once more and re-orthonormalized, since its
    weak directions amplify rounding). In the orthonormal basis B = [q | Q⊥], [q | x] has
    coordinates T = [[I, C], [0, R⊥]], so polar([q | x]) = B T (TᵀT)^{-1/2}. TᵀT differs from
    I by a rank ≤ 2l term Z (H − I) Zᵀ with Z = blockdiag(Q_C, I), C = Q_C R_C and
    H = [[I, R_C], [R_Cᵀ, R_CᵀR_C + R⊥ᵀR⊥]], so (TᵀT)^{-1/2} = I + Z (H^{-1/2} − I) Zᵀ needs one
    small (≤ 2l)² eigh (float64). The big products use B T = [q | q C + Q⊥ R⊥], so a defect of
    B is not amplified; they run in the input dtype unless κ([q | x]) > 30, where the
    κ-sized correction is applied in float64. Falls back to the SVD when [q | x] is
    numerically rank deficient. Wide enough float32 ``x`` (see STACK_FROM) may take a
    well-conditioned polar of the whole stack instead."""
    if x.shape[1] == 0:
        return q.clone()
    if q.dtype == torch.float32 and x.shape[1] >= STACK_FROM * q.shape[1]:
        whole = conditioned_polar(torch.cat([q, x], 1), STACK_MAX_COND)  # (p, k+l) or None
        if whole is not None:
            return whole
    c = q.T @ x  # (k, l)
    perp = x - q @ c  # (p, l)
    again = q.T @ perp  # second Gram–Schmidt pass
    c, perp = c + again, perp - q @ again
    q_perp, r_perp = torch.linalg.qr(perp)  # (p, l), (l, l)
    leak = q.T @ q_perp  # Q⊥'s rounding along q, amplified where R⊥ is small
    q_perp, r_fix = torch.linalg.qr(q_perp - q @ leak)
    c, r_perp = c + leak @ r_perp, r_fix @ r_perp  # still x = q C + Q⊥ R⊥
    qc, phi, lam = _extended(c, r_perp)
    if not _finite(lam, phi) or lam[0] < EXTENDED_RANK_CUT * lam[-1]:
        return polar(torch.cat([q, x], 1))
    routes.taken(routes.POLAR_EXTENDED)
    if lam[0] >= FLOAT32_APPLY_ABOVE * lam[-1]:
        return _apply_extended(q, q @ c + q_perp @ r_perp, qc, phi)
    q64 = q.double()  # the correction grows like κ: its float32 rounding would show as ~ε·κ
    out = _apply_extended(q64, q64 @ c.double() + q_perp.double() @ r_perp.double(), qc, phi)
    return out.to(q.dtype)
