"""Tiny live examples for the Learn page: three 'tasks' fine-tuning an 8×8 'layer'. Pure
functions (torch + plotly, no streamlit); the maths of merging itself comes from the engine."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from analysis.style import TASK_PALETTE, method_color, style_figure
from merging.tensors import task_vector

SIZE, TASKS, RANK = 8, 3, 2
KEY = "toy.weight"


def toy_zoo(shared: float, strength: float = 1.0, seed: int = 0) -> tuple[dict, list[dict]]:
    """θ0 and T fine-tuned copies of one 8×8 weight. Each update is rank 2: a direction shared
    by every task (weight ``shared``) plus the task's own direction (weight 1 − shared)."""
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(SIZE, SIZE, generator=g) * 0.5  # (8, 8)
    common_u, common_v = torch.randn(SIZE, RANK, generator=g), torch.randn(SIZE, RANK, generator=g)
    finetuned = []
    for _ in range(TASKS):
        own_u, own_v = torch.randn(SIZE, RANK, generator=g), torch.randn(SIZE, RANK, generator=g)
        update = shared * common_u @ common_v.T + (1 - shared) * own_u @ own_v.T  # (8, 8)
        finetuned.append({KEY: theta0 + strength * 0.3 * update})
    return {KEY: theta0}, finetuned


def task_matrices(pretrained: dict, finetuned: list[dict]) -> list[torch.Tensor]:
    return [task_vector(pretrained[KEY], ft[KEY]) for ft in finetuned]  # T × (8, 8)


def heatmaps(mats: dict[str, torch.Tensor]) -> go.Figure:
    """Side-by-side heatmaps on one colour scale (red positive, blue negative)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(mats), subplot_titles=list(mats), horizontal_spacing=0.04)
    bound = max(float(m.abs().max()) for m in mats.values()) or 1.0
    for i, m in enumerate(mats.values(), start=1):
        fig.add_trace(go.Heatmap(z=m.tolist(), zmin=-bound, zmax=bound, colorscale="RdBu_r",
                                 showscale=i == len(mats), hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=i)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    return style_figure(fig, height=260)


def spectrum_figure(curves: dict[str, torch.Tensor], colors: dict[str, str], log: bool = False,
                    marker_at: int | None = None) -> go.Figure:
    """Singular values, largest first, one line per named matrix."""
    fig = go.Figure()
    for name, sigma in curves.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(sigma) + 1)), y=[float(s) for s in sigma], name=name,
                                 mode="lines+markers", line=dict(color=colors.get(name)),
                                 hovertemplate=f"{name}<br>σ_%{{x}} = %{{y:.3f}}<extra></extra>"))
    if marker_at is not None:
        fig.add_vline(x=marker_at + 0.5, line_dash="dash", line_color="#868E96",
                      annotation_text=f"common | task-specific (k = {marker_at})")
    fig.update_xaxes(title="index i (largest first)", dtick=1)
    fig.update_yaxes(title="singular value σ_i", type="log" if log else "linear")
    return style_figure(fig, height=320)


def task_color_map() -> dict[str, str]:
    return {f"task {i + 1}": TASK_PALETTE[i] for i in range(TASKS)}


def method_color_map() -> dict[str, str]:
    return {"TA sum": method_color("task_arithmetic"), "Iso-C": method_color("iso_c"),
            "Iso-CTS": method_color("iso_cts")} | task_color_map()


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix)  # (min(m, n),), descending
