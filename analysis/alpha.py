"""Choosing the scaling coefficient α on validation data (docs/design.md, Analysis definitions; the
protocol of Ilharco et al., ICLR 2023, used by the Iso paper): the grid 0.1, 0.2, …, 3.0 and the
α with the best mean normalized validation accuracy.

The validation curve is near-unimodal in α, so the search is coarse-to-fine instead of
exhaustive: score every ``coarse_step``-th grid point, then hill-climb on the full grid from the
best one (move to the better neighbour while it improves). On a unimodal curve this returns the
grid argmax with about a third of the grid's evaluations; every score is computed at most once.
Sweeps warm-start the hill-climb from the previous point's α (the curve moves little between
neighbouring points), which needs fewer evaluations still.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 31))
COARSE_STEP = 5


@dataclass
class AlphaSearch:
    """The chosen α, its score, and every (α, score) evaluated, in evaluation order."""

    alpha: float
    score: float
    scores: dict[float, float] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return len(self.scores)


def search_alpha(score: Callable[[float], float], grid: Sequence[float] = ALPHA_GRID,
                 coarse_step: int = COARSE_STEP, start: float | None = None) -> AlphaSearch:
    """Coarse-to-fine maximisation of ``score`` over ``grid``. Equal scores prefer the smaller α,
    so a plateau resolves to its first point, as an exhaustive argmax would. With ``start`` (a
    warm start, e.g. the α chosen at the previous point of a sweep) the coarse pass is skipped
    and the hill-climb begins at the grid point nearest ``start``: on a unimodal curve it ends
    at the same argmax, usually after 3 or 4 evaluations."""
    if not grid:
        raise ValueError("empty α grid")
    scores: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in scores:
            scores[i] = float(score(grid[i]))
        return scores[i]

    def rank(i: int) -> tuple[float, int]:  # higher is better; on equal scores the smaller α
        value = at(i)  # NaN (e.g. a task whose fine-tuned accuracy is 0) ranks last: NaN never compares
        return (value if value == value else -math.inf), -i

    if start is None:
        best = max(range(min(coarse_step // 2, len(grid) - 1), len(grid), max(coarse_step, 1)), key=rank)
    else:
        best = min(range(len(grid)), key=lambda i: abs(grid[i] - start))
    while True:
        step = max([j for j in (best - 1, best + 1) if 0 <= j < len(grid)] or [best], key=rank)
        if rank(step) <= rank(best):
            break
        best = step
    log.debug("α search: %d of %d grid points, best α=%s", len(scores), len(grid), grid[best])
    return AlphaSearch(alpha=grid[best], score=scores[best], scores={grid[i]: v for i, v in scores.items()})


def fixed_alpha(alpha: float, score: Callable[[float], float] | None = None) -> AlphaSearch:
    """An α given by the user or fixed by the method (scored when ``score`` is given)."""
    value = float(score(alpha)) if score is not None else float("nan")
    return AlphaSearch(alpha=alpha, score=value, scores={alpha: value} if score is not None else {})
