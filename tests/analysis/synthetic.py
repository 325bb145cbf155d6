"""A tiny synthetic zoo for the analysis tests: weights are a few small tensors and
``evaluate`` has a closed form, accuracy(θ, t) = exp(−‖θ − θt‖² / (c·‖τt‖²)), so it equals 1 for
the fine-tuned model, exp(−1/c) for θ0, and is a smooth unimodal function of α for θ0 + α·Δ."""

from __future__ import annotations

import math
import time

import torch

from merging.tensors import StateDict
from zoo.base import Zoo

SHAPES = {
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.mlp.c_fc.weight": (8, 4),
    "transformer.resblocks.0.mlp.c_fc.bias": (8,),
    "ln_post.weight": (4,),
}
SCALE = {"val": 2.0, "test": 2.5}


class SyntheticZoo(Zoo):
    """Three (or ``num_tasks``) tasks with random low-rank task matrices; counts evaluations."""

    def __init__(self, num_tasks: int = 3, seed: int = 0, delay: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.name = "synthetic"
        self.tasks = [chr(ord("A") + i) for i in range(num_tasks)]
        self._theta0 = {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}
        self._tau = {t: {k: self._tau_like(s, g) for k, s in SHAPES.items()} for t in self.tasks}
        self._fp = f"synthetic-{num_tasks}-{seed}"
        self.delay = delay
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def _tau_like(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
        if len(shape) == 2:
            return 0.3 * torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)  # rank 2
        return 0.3 * torch.randn(*shape, generator=g)

    @property
    def fingerprint(self) -> str:
        return self._fp

    def pretrained(self) -> StateDict:
        return self._theta0

    def finetuned(self, task: str) -> StateDict:
        return {k: v + self._tau[task][k] for k, v in self._theta0.items()}

    def expected(self, state_dict: StateDict, task: str, split: str) -> float:
        """The closed form (no call counted)."""
        dist = sum(float(((state_dict[k] - v) ** 2).sum()) for k, v in self.finetuned(task).items())
        norm = sum(float((v ** 2).sum()) for v in self._tau[task].values())
        return math.exp(-dist / (SCALE[split] * norm))

    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        self.calls.append((task, split))
        if self.delay:
            time.sleep(self.delay)
        return self.expected(state_dict, task, split)
