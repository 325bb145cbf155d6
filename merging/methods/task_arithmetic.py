"""Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023,
arXiv:2212.04089, Eq. 1): θ = θ0 + α Σt τt.  docs/design.md, Methods."""

from __future__ import annotations

import torch

from merging.methods.common import Layer, Params
from merging.registry import Method, register


def task_arithmetic(layer: Layer, _params: Params) -> torch.Tensor:
    """Δ = Σt τt for every parameter."""
    return layer.total()


METHOD = register(Method(
    name="task_arithmetic",
    display_name="Task Arithmetic",
    paper_url="https://arxiv.org/abs/2212.04089",
    summary="Adds up the task vectors: θ = θ0 + α·Σt τt.",
    fn=task_arithmetic,
    color="#495057",
    sum_basis=lambda sigma, num_tasks: sigma,  # Δ = S itself
    linear=True,
))
