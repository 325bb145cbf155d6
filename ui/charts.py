"""Chart builders for the few views whose figures ``analysis.figures`` does not build: each takes the
tidy DataFrames of ``analysis`` and returns a plotly Figure in the house style (ui/theme.py).
Pure: no streamlit."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.theme import METHOD_COLORS, style_figure

PCT = dict(tickformat=".0%", rangemode="tozero")


LINE_STYLE = {"task": dict(width=1.1), "sum": dict(width=2.5, dash="dash"), "merged": dict(width=2.5)}


def small_multiples(table: pd.DataFrame, log: bool = True, columns: int = 4) -> go.Figure:
    """One small σ chart per layer for every source of an ``analysis.spectra.spectra`` frame
    (colours are applied afterwards by ``ui.theme.recolor``)."""
    layers = list(dict.fromkeys(table["layer"]))
    rows = math.ceil(len(layers) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=layers, vertical_spacing=0.35 / max(rows, 1),
                        horizontal_spacing=0.04)
    for i, (layer, part) in enumerate(table.groupby("layer", sort=False)):
        for (source, kind), curve in part.groupby(["source", "kind"], sort=False):
            fig.add_trace(go.Scatter(x=curve["index"], y=curve["sigma"], name=str(source), legendgroup=str(source),
                                     showlegend=i == 0, mode="lines", line=LINE_STYLE[kind],
                                     hovertemplate=f"{layer} · {source}<br>σ_%{{x}} = %{{y:.3e}}<extra></extra>"),
                          row=i // columns + 1, col=i % columns + 1)
    fig.update_yaxes(type="log" if log else "linear")
    fig.update_layout(title="Singular values σi of every matrix layer (index i on x)")
    return style_figure(fig, height=max(280, 200 * rows + 60))


def reference_bars(table: pd.DataFrame, series: dict[str, str]) -> go.Figure:
    """Per-task accuracy bars for each column of ``series`` ({column: legend name}), coloured by method."""
    colors = {"zero_shot": METHOD_COLORS["zero_shot"], "accuracy": METHOD_COLORS["merged"],
              "finetuned": METHOD_COLORS["finetuned"]}
    fig = go.Figure([go.Bar(x=table["task"], y=table[col], name=name, marker_color=colors.get(col),
                            hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}}<extra></extra>")
                     for col, name in series.items()])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="test accuracy (top-1)", **PCT)
    return style_figure(fig, height=360)


def norm_bars(norms: pd.DataFrame, task_colors: dict[str, str]) -> go.Figure:
    """‖τt‖ per task (``analysis.similarity.norms_and_cosines`` first frame)."""
    fig = go.Figure(go.Bar(x=norms["task"], y=norms["norm"], marker_color=[task_colors.get(t) for t in norms["task"]],
                           hovertemplate="%{x}<br>‖τ‖F = %{y:.4g}<extra></extra>"))
    fig.update_layout(title="Task-vector norm ‖τt‖F")
    fig.update_yaxes(title="Frobenius norm (weight units)", rangemode="tozero")
    return style_figure(fig, height=340)


def cosine_heatmap(cosines: pd.DataFrame) -> go.Figure:
    """Pairwise cos(τi, τj) as a symmetric heatmap, values printed in the cells."""
    z = cosines.to_numpy()
    fig = go.Figure(go.Heatmap(z=z, x=list(cosines.columns), y=list(cosines.index), zmin=-1, zmax=1,
                               colorscale="RdBu_r", colorbar=dict(title="cos"), texttemplate="%{z:.2f}",
                               hovertemplate="cos(τ %{y}, τ %{x}) = %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Pairwise cosine similarity of task vectors")
    fig.update_yaxes(autorange="reversed")
    return style_figure(fig, height=340)
