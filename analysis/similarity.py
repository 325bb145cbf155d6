"""Task-vector geometry for the Overview view: the norm ‖τt‖ of every task vector and the
pairwise cosine similarity cos(τi, τj) = ⟨τi, τj⟩ / (‖τi‖ ‖τj‖) over all parameters (the
measure of Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, §4, where task
vectors of different tasks are found nearly orthogonal).

The Gram matrix G = Σ_key V_key V_keyᵀ is accumulated key by key (V_key is the (T, numel)
stack of one parameter), so no task vector is ever flattened whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

Vectors = Sequence[Mapping[str, torch.Tensor]]


def key_gram(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """⟨τi[key], τj[key]⟩ for the T task tensors of one parameter, in float64.  # (T, T)"""
    stack = torch.stack([t.reshape(-1).to("cpu", torch.float64) for t in tensors])  # (T, numel)
    return (stack @ stack.T).numpy()


def gram(task_vectors: Vectors) -> np.ndarray:
    """G[i, j] = ⟨τi, τj⟩ over every parameter, in float64, summed one key at a time.  # (T, T)"""
    count = len(task_vectors)
    total = np.zeros((count, count))
    for key in task_vectors[0] if count else ():
        total += key_gram([tv[key] for tv in task_vectors])
    return total


def norms_and_cosines(task_vectors: Vectors, tasks: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per task: ``task, norm``; the T×T cosine matrix indexed by task both ways).
    A zero task vector has NaN cosines."""
    return geometry_from_gram(gram(task_vectors), tasks)


def geometry_from_gram(g: np.ndarray, tasks: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``norms_and_cosines`` from a Gram matrix G (T, T) already summed over the keys."""
    norm = np.sqrt(np.clip(np.diag(g), 0.0, None))  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = g / np.where(np.outer(norm, norm) == 0, np.nan, np.outer(norm, norm))
    names = list(tasks)
    return (pd.DataFrame({"task": names, "norm": norm}),
            pd.DataFrame(cos, index=pd.Index(names, name="task"), columns=names))
