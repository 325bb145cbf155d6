"""The Learn tour's toy: three tasks fine-tuning one 8×8 layer, merged by the real engine and
scored by a toy NAI, so every claim of the tour can be checked on numbers.

Construction (one fixed seed). Inputs live in R⁸, split into orthonormal blocks: a 2-D block
every task reads (the *shared* inputs) and a 2-D block per task (its *own* inputs). Task t's
update is

    Δt = scale_t · (shared·A + (1 − shared)·Bt + NOISE·Nt)

with A (rank 2) reading the shared inputs, Bt (rank 2) reading task t's own inputs, and Nt a
faint dense matrix. So each Δt has rank 4 plus a faint full-rank part, and the sum Σt Δt is
full rank (rank 8) at every setting: without Nt it would be exactly rank-deficient at
shared = 0 (rank 6) and shared = 1 (rank 2), where Iso-C's flat spectrum would raise directions
that no task uses (the engine, like the authors' code, averages all min(m, n) singular values).
Near shared = 1 the sum is still *nearly* rank-deficient; ``weak_directions`` measures it.

The last task is the *weak* one: scale_t = weak for it and 1 for the others, the toy's version of
a task whose small update is drowned in the sum (SUN397 or Cars in Marczak et al., "No Task
Left Behind", ICML 2025, Sec. 3).

Toy accuracy. A classifier on CLIP features compares directions, so a task is scored by how
well a layer W reproduces the fine-tuned layer's *output directions* on the task's inputs:
q_t(W) = mean over task t's input basis vectors x of cos(W x, θt x). The toy NAI then follows the
paper's definition of NAI with q in place of accuracy:

    NAI_t(θ) = (q_t(θ) − q_t(θ0)) / (q_t(θt) − q_t(θ0))       (q_t(θt) = 1)

1 means the merge reproduces the fine-tuned outputs, 0 no better than the pretrained layer, and
it is negative when the merge does worse than the pretrained layer. α is tuned per method on the
grid 0.1 … 3.0 for the best mean toy NAI (the protocol of ``analysis.alpha``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from analysis.alpha import ALPHA_GRID
from merging.merge import Merger
from merging.methods.iso import common_rank
from merging.registry import get_method

SIZE, TASKS = 8, 3
SHARED_RANK, OWN_RANK = 2, 2
TASK_RANK = SHARED_RANK + OWN_RANK  # 4: the rank of each task matrix (before the faint part)
KEY = "toy.weight"
SCALE, NOISE = 3.0, 0.1
DEFAULT_SHARED, DEFAULT_WEAK, DEFAULT_FRACTION = 0.5, 0.3, 0.25
TOUR_METHODS = ("task_arithmetic", "iso_c", "iso_cts")
OTHER_METHODS = ("tsv_m", "cart", "ties")


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per setting (``toy_zoo`` caches it)
class ToyZoo:
    """θ0, the T fine-tuned copies and each task's input basis (8, 4): shared block, own block."""

    pretrained: dict[str, torch.Tensor]
    finetuned: list[dict[str, torch.Tensor]]
    inputs: list[torch.Tensor]
    shared: float
    weak: float
    shared_out: torch.Tensor  # (8, 2) orthonormal basis of the shared part's output directions

    @property
    def tasks(self) -> list[str]:
        return task_names()


def task_names() -> list[str]:
    return [f"task {i + 1}" for i in range(TASKS - 1)] + [f"task {TASKS} (weak)"]


def toy_zoo(shared: float = DEFAULT_SHARED, weak: float = DEFAULT_WEAK, seed: int = 0,
            noise: float | None = None) -> ToyZoo:
    """The toy at ``shared`` ∈ [0, 1] and weak-task scale ``weak`` > 0 (see module doc); ``noise``
    None is NOISE (0 drops the faint part, to read off the ranks of the designed parts). Built once
    per setting and shared: never mutate it."""
    if not 0.0 <= shared <= 1.0 or weak <= 0:
        raise ValueError(f"shared must be in [0, 1] and weak > 0; got {shared} and {weak}")
    return _toy_zoo(float(shared), float(weak), seed, NOISE if noise is None else float(noise))


@lru_cache(maxsize=256)
def _toy_zoo(shared: float, weak: float, seed: int, noise: float) -> ToyZoo:
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(SIZE, SIZE, generator=g, dtype=torch.float64) / SIZE ** 0.5  # (8, 8)
    q, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=g, dtype=torch.float64))  # (8, 8) orthonormal
    shared_in = q[:, :SHARED_RANK]  # (8, 2)
    shared_out = torch.randn(SIZE, SHARED_RANK, generator=g, dtype=torch.float64) / SIZE ** 0.5  # (8, 2)
    finetuned, inputs = [], []
    for t in range(TASKS):
        own_in = q[:, SHARED_RANK + OWN_RANK * t:SHARED_RANK + OWN_RANK * (t + 1)]  # (8, 2)
        own_out = torch.randn(SIZE, OWN_RANK, generator=g, dtype=torch.float64) / SIZE ** 0.5  # (8, 2)
        faint = torch.randn(SIZE, SIZE, generator=g, dtype=torch.float64) / SIZE  # (8, 8)
        scale = SCALE * (weak if t == TASKS - 1 else 1.0)
        update = scale * (shared * shared_out @ shared_in.T + (1 - shared) * own_out @ own_in.T + noise * faint)
        finetuned.append({KEY: (theta0 + update).float()})
        inputs.append(torch.cat([shared_in, own_in], dim=1))  # (8, 4)
    return ToyZoo({KEY: theta0.float()}, finetuned, inputs, shared, weak, torch.linalg.qr(shared_out)[0])


def task_matrices(zoo: ToyZoo) -> list[torch.Tensor]:
    """Δt = θt − θ0, T × (8, 8)."""
    return [ft[KEY] - zoo.pretrained[KEY] for ft in zoo.finetuned]


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.double())  # (min(m, n),), descending


def designed_ranks(shared: float, weak: float) -> list[int]:
    """The rank of each task matrix without its faint part: 4 (shared and own parts), or 2 where
    one of them has weight 0 (shared = 0 or 1)."""
    return [int(torch.linalg.matrix_rank(d.double(), rtol=1e-6)) for d in task_matrices(toy_zoo(shared, weak, noise=0))]


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosines of the principal angles between the column spans of orthonormal ``a`` (m, p) and
    ``b`` (m, q), largest first: 1 where the spans share a direction, 0 where they are orthogonal."""
    return [float(c) for c in torch.linalg.svdvals(a.double().T @ b.double())]


def sum_overlap(zoo: ToyZoo) -> list[float]:
    """Principal cosines between the TA sum's top-SHARED_RANK left singular directions and the
    shared part's output directions: how well the sum's top block finds what the tasks share."""
    u = torch.linalg.svd(sum(task_matrices(zoo)).double(), full_matrices=False)[0][:, :SHARED_RANK]  # (8, 2)
    return principal_cosines(u, zoo.shared_out)


def weak_directions(zoo: ToyZoo) -> float:
    """σ_min / σ_max of the TA sum: near 0, the sum is nearly rank-deficient."""
    s = singular_values(sum(task_matrices(zoo)))
    return float(s[-1] / s[0])


# -- scoring -------------------------------------------------------------------------------------

def output_agreement(weight: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """q: mean over the columns x of ``inputs`` (8, d) of cos(weight·x, target·x), for one weight
    (8, 8) or a stack (A, 8, 8); a scalar tensor or (A,)."""
    a, b = weight.double() @ inputs.double(), target.double() @ inputs.double()  # (…, 8, d), (8, d)
    return torch.nn.functional.cosine_similarity(a, b.expand_as(a), dim=-2).mean(-1)


def toy_nai_batch(zoo: ToyZoo, weights: torch.Tensor) -> torch.Tensor:
    """NAI_t of every merged layer in ``weights`` (A, 8, 8) for every task: (A, T)."""
    out = []
    for ft, x in zip(zoo.finetuned, zoo.inputs):
        zero = output_agreement(zoo.pretrained[KEY], ft[KEY], x)
        out.append((output_agreement(weights, ft[KEY], x) - zero) / (1.0 - zero))
    return torch.stack(out, dim=1)


def toy_nai(zoo: ToyZoo, weight: torch.Tensor) -> list[float]:
    """NAI_t of the merged layer ``weight`` for every task (module doc)."""
    return toy_nai_batch(zoo, weight[None])[0].tolist()


@dataclass(frozen=True)
class ToyMerge:
    """One method on the toy: its update Δ (as the engine returns it), its tuned α, the merged
    layer θ = base + α·Δ, and the toy NAI per task at that α."""

    method: str
    delta: torch.Tensor
    alpha: float
    weight: torch.Tensor
    nai: list[float]
    theta0: torch.Tensor

    @property
    def update(self) -> torch.Tensor:
        """θ − θ0, the update from the pretrained layer (CART's base is the weight average)."""
        return self.weight - self.theta0  # (8, 8)


def _tuned(zoo: ToyZoo, name: str, delta: torch.Tensor, base: torch.Tensor, grid: Sequence[float]) -> ToyMerge:
    """θ = base + α·Δ with α from ``grid`` giving the best mean toy NAI (the smallest α on ties)."""
    alphas = torch.tensor(list(grid), dtype=torch.float64)  # (A,)
    nai = toy_nai_batch(zoo, base.double() + alphas[:, None, None] * delta.double())  # (A, T)
    i = int(torch.argmax(nai.mean(1)))  # the first (smallest α) of equal maxima
    alpha = float(grid[i])
    return ToyMerge(name, delta, alpha, base + alpha * delta, nai[i].tolist(), zoo.pretrained[KEY])


def merge(zoo: ToyZoo, method: str, params: Mapping[str, float] | None = None) -> ToyMerge:
    """``method`` on the toy with α tuned for the best mean toy NAI (fixed-α methods keep theirs)."""
    return _merge(zoo, get_method(method).name, tuple(sorted((params or {}).items())))


@lru_cache(maxsize=512)
def _merge(zoo: ToyZoo, method: str, params: tuple[tuple[str, float], ...]) -> ToyMerge:
    upd = Merger(zoo.pretrained, zoo.finetuned, device="cpu").update(method, dict(params))
    base = upd.base[KEY]  # (8, 8): θ0, or the weight average for CART
    fixed = upd.fixed_alpha
    return _tuned(zoo, method, upd.delta[KEY], base, (fixed,) if fixed is not None else ALPHA_GRID)


INTERPOLATION = "interpolation"  # ToyMerge.method of ``interpolate``


def interpolated_delta(deltas: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
    """U ((1 − β) Σ + β σ̄ I) Vᵀ for the TA sum S = U Σ Vᵀ: β = 0 is the sum (TA), β = 1 its
    flattened form σ̄ U Vᵀ (Iso-C); in between, the spectrum moves linearly towards flat."""
    u, s, vh = torch.linalg.svd(sum(d.double() for d in deltas), full_matrices=False)  # (m, r), (r,), (r, n)
    return (u * ((1 - beta) * s + beta * s.mean())) @ vh  # (m, n)


@lru_cache(maxsize=512)
def interpolate(zoo: ToyZoo, beta: float) -> ToyMerge:
    """The merge θ0 + α·``interpolated_delta`` at ``beta``, α tuned like every method."""
    delta = interpolated_delta(task_matrices(zoo), beta).to(zoo.pretrained[KEY].dtype)
    return _tuned(zoo, INTERPOLATION, delta, zoo.pretrained[KEY], ALPHA_GRID)


def iso_cts_blocks(deltas: Sequence[torch.Tensor], common_fraction: float) -> list[tuple[str, torch.Tensor]]:
    """The singular values Iso-CTS stacks before it flattens (Marczak et al., Algorithm 1): the
    top-k σ of the sum (the common block), then each task's top-s σ of its residual
    Rt = Δt − Uk Ukᵀ Δt. [(source, σ of that block)], common first."""
    total = sum(d.double() for d in deltas)  # (m, n)
    u, s, _ = torch.linalg.svd(total, full_matrices=False)  # (m, r), (r,)
    k, per_task = common_rank(len(s), len(deltas), common_fraction)
    uk = u[:, :k]  # (m, k)
    blocks = [("common", s[:k])]
    for name, d in zip(task_names(), deltas):
        residual = d.double() - uk @ (uk.T @ d.double())  # (m, n)
        blocks.append((name, torch.linalg.svdvals(residual)[:per_task]))
    return blocks
