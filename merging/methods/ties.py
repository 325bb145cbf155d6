"""TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
NeurIPS 2023, arXiv:2306.01708, Sec. 3: trim, elect sign, disjoint merge).  docs/design.md, Methods.

Over each task vector flattened across ALL parameters, keep its top-k% entries by magnitude
(ties at the threshold are kept), elect per entry the sign of the summed kept values, and
average only the kept values that agree with it (entries nobody keeps stay 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from merging.methods.common import Layer, Params
from merging.registry import Method, Param, register
from merging.tensors import flatten


def magnitude_threshold(vector: torch.Tensor, top_k: float, overwrite: bool = False) -> float:
    """The smallest |entry| kept when keeping the top ``top_k`` percent of ``vector`` (N,);
    +inf when nothing is kept. A selection in place on one float32 buffer (``overwrite``: the
    caller's own vector is that buffer), so a model-sized vector costs one copy at most, not
    the values and int64 indices ``kthvalue`` allocates."""
    n = vector.numel()
    keep = int(round(n * top_k / 100.0))
    if keep <= 0:
        return float("inf")
    magnitudes = (vector.abs_() if overwrite else vector.abs()).detach().cpu().numpy()  # (N,), shares memory
    magnitudes.partition(n - keep)
    return float(magnitudes[n - keep])


def thresholds(task_vector_of: Callable[[int], Mapping[str, torch.Tensor]], num_tasks: int,
               params: Params) -> Mapping[str, Any]:
    """One magnitude threshold per task, over its flattened task vector (one task at a time, its
    state dict dropped once flattened)."""
    return {"thresholds": [magnitude_threshold(flatten(task_vector_of(t)), params["top_k"], overwrite=True)
                           for t in range(num_tasks)]}


def ties(layer: Layer, _params: Params) -> torch.Tensor:
    """Trim, elect, disjoint mean on one parameter (thresholds come from ``thresholds``), in place
    on one (T, …) stack: entry j of task t agrees when kept·sign_j > 0, which is
    sign(kept) = sign_j with kept ≠ 0, so fewer passes give the same values."""
    cuts = layer.shared["thresholds"]
    kept = torch.stack(list(layer.taus))  # (T, *shape), trimmed in place below
    cut = torch.tensor(cuts, dtype=kept.dtype, device=kept.device).view(-1, *([1] * (kept.dim() - 1)))
    kept.masked_fill_(kept.abs() < cut, 0.0)
    sign = torch.sign(kept.sum(0))  # (*shape,)
    agree = torch.mul(kept, sign) > 0  # (T, *shape)
    count = agree.sum(0)
    total = kept.masked_fill_(agree.logical_not_(), 0.0).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


METHOD = register(Method(
    name="ties",
    display_name="TIES-Merging",
    paper_url="https://arxiv.org/abs/2306.01708",
    summary="Trims each task vector to its largest entries, elects a sign per weight and averages "
            "the values that agree.",
    fn=ties,
    color="#A47148",
    params=(Param("top_k", 20.0, 1.0, 100.0, 1.0,
                  "Percent of each task vector's entries kept (largest magnitudes, over all parameters).",
                  label="kept entries top-k (%)"),),
    prepare=thresholds,
))
