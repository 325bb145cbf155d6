"""Tiny state dicts shaped like a visual tower: tall, wide and square matrices with smoothly
decaying spectra (so Iso-CTS's common/task boundary is well defined), 1-D and 4-D params."""

from __future__ import annotations

import pytest
import torch

SHAPES = {
    "conv1.weight": (4, 3, 2, 2),
    "positional_embedding": (6, 16),
    "blocks.0.ln_1.weight": (16,),
    "blocks.0.attn.in_proj_weight": (24, 16),
    "blocks.0.attn.in_proj_bias": (24,),
    "blocks.0.attn.out_proj.weight": (20, 20),
    "blocks.0.mlp.c_proj.weight": (16, 24),
    "proj": (16, 8),
    "text_projection": (8, 8),
}


def decaying(m: int, n: int, gen: torch.Generator, scale: float = 1.0, decay: float = 0.85) -> torch.Tensor:
    """A random m×n matrix with singular values scale·decay^i and random orthogonal factors."""
    r = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return ((u * (scale * decay ** torch.arange(r, dtype=torch.float64))) @ v.T).float()


def make_models(num_tasks: int, seed: int = 0, shapes: dict | None = None, scale: float = 0.1,
                decay: float = 0.85) -> tuple[dict, list[dict]]:
    """θ0 and T fine-tunes; task matrices have σi = scale·decay^i (``decaying``)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = shapes or SHAPES
    pre = {k: torch.randn(*s, generator=gen) for k, s in shapes.items()}
    fts = []
    for _ in range(num_tasks):
        ft = {}
        for k, s in shapes.items():
            tau = decaying(*s, gen, scale, decay) if len(s) == 2 else 0.05 * torch.randn(*s, generator=gen)
            ft[k] = pre[k] + tau
        fts.append(ft)
    return pre, fts


@pytest.fixture(params=[3, 4], ids=["T3", "T4"])
def models(request: pytest.FixtureRequest) -> tuple[dict, list[dict]]:
    return make_models(request.param, seed=request.param)
