"""Plotly figure builders, one per dashboard view: DataFrame(s) in, ``go.Figure`` out. Built
here, shown by the app pages and the HTML report. Accuracies are shown in percent.

Inputs are the tidy frames of ``analysis.spectra``, ``analysis.sar``, ``analysis.sweeps``,
``analysis.similarity`` and ``analysis.report``; see each function. Methods take their fixed
house colours (``analysis.style``), tasks theirs by position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.correlation import least_squares_line
from analysis.style import ACCENT, REFERENCE_COLORS, SUM_COLOR, TEMPLATE, method_colors, style_figure, task_color

PCT = dict(tickformat=".0%", rangemode="tozero")


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra: object) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template=TEMPLATE, hovermode="closest",
                      legend_title_text="", margin={"l": 60, "r": 20, "t": 60, "b": 50}, **extra)
    return fig


def _method_color(name: str, i: int) -> str:
    """A method's house colour by its name in the frame; unknown names get a task colour."""
    return method_colors().get(name) or task_color(i)


def _boundary_line(fig: go.Figure, boundary: Mapping[str, float] | None) -> None:
    if boundary:
        k = int(boundary["k"])
        fig.add_vline(x=k + 0.5, line_dash="dot", line_color="#555",
                      annotation_text=f"common k = {k} | task-specific s = {int(boundary['s'])} each",
                      annotation_position="top right")


def _spectrum_traces(fig: go.Figure, layer_df: pd.DataFrame, column: str, fmt: str) -> None:
    """One line per source: tasks thin and coloured, the TA sum black dashed, methods thick."""
    style = {"task": {"width": 1.2}, "sum": {"width": 2.5, "dash": "dash", "color": SUM_COLOR},
             "merged": {"width": 3}}
    counters = {"task": 0, "merged": 0}
    for (source, kind), part in layer_df.groupby(["source", "kind"], sort=False):
        line = dict(style[kind])
        if kind in counters:
            i = counters[kind]
            line.setdefault("color", task_color(i) if kind == "task" else _method_color(str(source), i))
            counters[kind] += 1
        fig.add_trace(go.Scatter(x=part["index"], y=part[column], mode="lines", name=str(source), line=line,
                                 hovertemplate=f"{source}<br>index %{{x}}<br>{fmt}<extra></extra>"))


def spectrum_figure(spectra: pd.DataFrame, layer: str, boundary: Mapping[str, float] | None = None) -> go.Figure:
    """Singular values σi vs index i (log scale) of one layer, for every source in ``spectra``;
    ``boundary`` (a ``common_boundary`` row) marks where Iso-CTS's common subspace ends."""
    fig = go.Figure()
    _spectrum_traces(fig, spectra[spectra["layer"] == layer], "sigma", "σ = %{y:.3e}")
    _boundary_line(fig, boundary)
    return _layout(fig, f"Singular value spectrum · {layer}", "singular value index i", "σi (log scale)",
                   yaxis_type="log")


def energy_figure(spectra: pd.DataFrame, layer: str, boundary: Mapping[str, float] | None = None) -> go.Figure:
    """Cumulative energy Σ_{j≤i} σj² / Σ σj² (in %) vs index i of one layer, per source."""
    part = spectra[spectra["layer"] == layer].assign(energy_pct=lambda d: 100 * d["energy"])
    fig = go.Figure()
    _spectrum_traces(fig, part, "energy_pct", "energy %{y:.1f}%")
    _boundary_line(fig, boundary)
    return _layout(fig, f"Cumulative spectral energy · {layer}", "number of singular values kept",
                   "cumulative energy (%)", yaxis_range=[0, 101])


def sar_heatmap(sar: pd.DataFrame, method: str | None = None) -> go.Figure:
    """SAR per task (rows) × layer (columns) of one method (from ``sar_table``); hover shows k_M."""
    part = sar if method is None else sar[sar["method"] == method]
    name = method or (str(part["method"].iloc[0]) if len(part) else "")
    grid = part.pivot(index="task", columns="layer", values="sar")
    kgrid = part.pivot(index="task", columns="layer", values="k_m")
    layers = list(dict.fromkeys(part["layer"]))
    tasks = list(dict.fromkeys(part["task"]))
    grid, kgrid = grid.reindex(index=tasks, columns=layers), kgrid.reindex(index=tasks, columns=layers)
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=layers, y=tasks, zmin=0, zmax=1, colorscale="Viridis",
                               customdata=kgrid.to_numpy(), colorbar={"title": "SAR"},
                               hovertemplate="task %{y}<br>layer %{x}<br>SAR %{z:.3f}<br>k_M %{customdata}"
                                             "<extra></extra>"))
    return _layout(fig, f"Subspace alignment ratio · {name}", "layer", "task", yaxis_autorange="reversed")


def sar_avg_bars(sar_avg: pd.DataFrame) -> go.Figure:
    """SAR_avg per task, one bar group per task and one colour per method."""
    fig = go.Figure()
    for i, (method, part) in enumerate(sar_avg.groupby("method", sort=False)):
        fig.add_trace(go.Bar(x=part["task"], y=part["sar_avg"], name=str(method), marker_color=_method_color(str(method), i),
                             hovertemplate=f"{method}<br>%{{x}}<br>SAR_avg %{{y:.3f}}<extra></extra>"))
    return _layout(fig, "Average subspace alignment ratio per task", "task", "SAR_avg (0–1)", barmode="group",
                   yaxis_range=[0, 1.05])


def sar_nai_scatter(points: pd.DataFrame, corr: Mapping[str, float] | None = None) -> go.Figure:
    """NAI vs SAR_avg, one point per method × task (one colour per method), with the
    least-squares line over all points and Pearson r in the title."""
    fig = go.Figure()
    for i, (method, part) in enumerate(points.groupby("method", sort=False)):
        fig.add_trace(go.Scatter(x=part["sar_avg"], y=part["nai"], mode="markers", name=str(method),
                                 marker={"size": 9, "color": _method_color(str(method), i)}, text=part["task"],
                                 hovertemplate=f"{method} · %{{text}}<br>SAR_avg %{{x:.3f}}<br>NAI %{{y:.3f}}"
                                               "<extra></extra>"))
    slope, intercept = least_squares_line(points["sar_avg"], points["nai"])
    if np.isfinite(slope):
        xs = np.linspace(points["sar_avg"].min(), points["sar_avg"].max(), 2)
        fig.add_trace(go.Scatter(x=xs, y=slope * xs + intercept, mode="lines", name="least-squares fit",
                                 line={"color": SUM_COLOR, "dash": "dash"},
                                 hovertemplate=f"NAI ≈ {slope:.2f}·SAR + {intercept:.2f}<extra></extra>"))
    title = "Alignment vs performance"
    if corr and np.isfinite(corr.get("pearson", np.nan)):
        title += f" · Pearson r = {corr['pearson']:.2f} (p = {corr['pearson_p']:.1g}), " \
                 f"Spearman ρ = {corr['spearman']:.2f}, n = {corr['n']}"
    return _layout(fig, title, "SAR_avg (alignment with the merged subspace)", "NAI (normalized accuracy improvement)")


def _curve_figure(table: pd.DataFrame, x_label: str, title: str, current: float | None, split: str) -> go.Figure:
    """Per-task accuracy lines (thin) and their average (thick) vs ``value``; ``current`` ringed."""
    part = table[table["split"] == split].assign(pct=lambda d: 100 * d["accuracy"])
    fig = go.Figure()
    for i, (task, rows) in enumerate(part.groupby("task", sort=False)):
        fig.add_trace(go.Scatter(x=rows["value"], y=rows["pct"], mode="lines+markers", name=str(task),
                                 line={"width": 1.2, "color": task_color(i)}, marker={"size": 4},
                                 customdata=rows["alpha"], hovertemplate=f"{task}<br>{x_label} %{{x:g}}<br>"
                                 "accuracy %{y:.1f}%<br>α %{customdata:g}<extra></extra>"))
    avg = part.groupby("value", sort=True)["pct"].mean()
    fig.add_trace(go.Scatter(x=avg.index, y=avg.to_numpy(), mode="lines+markers", name="average",
                             line={"width": 4, "color": SUM_COLOR},
                             hovertemplate=f"average<br>{x_label} %{{x:g}}<br>accuracy %{{y:.1f}}%<extra></extra>"))
    if current is not None and len(avg):
        nearest = avg.index[np.argmin(np.abs(avg.index.to_numpy() - current))]
        fig.add_trace(go.Scatter(x=[nearest], y=[avg[nearest]], mode="markers", name="current",
                                 marker={"size": 16, "symbol": "circle-open", "line": {"width": 3},
                                         "color": ACCENT},
                                 hovertemplate=f"current {x_label} %{{x:g}}<br>average %{{y:.1f}}%<extra></extra>"))
    return _layout(fig, title, x_label, f"{split} accuracy (%)")


def sweep_curve(sweep: pd.DataFrame, method: str, param: str, current: float | None = None,
                split: str = "test") -> go.Figure:
    """``method``'s accuracy vs its parameter ``param`` (display names; ``param_sweep`` rows)."""
    return _curve_figure(sweep, param, f"{method} accuracy vs {param}", current, split)


def alpha_curve(sweep: pd.DataFrame, chosen: float | None = None) -> go.Figure:
    """Average validation and test accuracy vs α (``alpha_sweep`` rows); ``chosen`` marked."""
    fig = go.Figure()
    method = str(sweep["method"].iloc[0]) if len(sweep) else ""
    for split, dash in (("val", "dot"), ("test", "solid")):
        avg = sweep[sweep["split"] == split].groupby("value", sort=True)["accuracy"].mean() * 100
        fig.add_trace(go.Scatter(x=avg.index, y=avg.to_numpy(), mode="lines+markers", name=f"{split} (average)",
                                 line={"dash": dash, "width": 3},
                                 hovertemplate=f"{split}<br>α %{{x:g}}<br>accuracy %{{y:.1f}}%<extra></extra>"))
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dash", line_color=ACCENT, annotation_text=f"chosen α = {chosen:g}")
    return _layout(fig, f"Accuracy vs scaling coefficient α · {method}", "α", "average accuracy (%)")


def method_bars(summary: pd.DataFrame) -> go.Figure:
    """Average absolute and normalized test accuracy per method (``report.summary_table`` rows)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=summary["method"], y=summary["accuracy"], name="absolute (%)", marker_color=REFERENCE_COLORS["merged"],
                         hovertemplate="%{x}<br>absolute %{y:.1f}%<extra></extra>"))
    fig.add_trace(go.Bar(x=summary["method"], y=summary["normalized"], name="normalized (%)", marker_color=ACCENT,
                         hovertemplate="%{x}<br>normalized %{y:.1f}%<extra></extra>"))
    return _layout(fig, "Average test accuracy per method", "method", "accuracy (%)", barmode="group")


# -- compact app charts (house layout of ``analysis.style.style_figure``) ---------------------------

LINE_STYLE = {"task": dict(width=1.1), "sum": dict(width=2.5, dash="dash"), "merged": dict(width=2.5)}


def small_multiples(table: pd.DataFrame, log: bool = True, columns: int = 4) -> go.Figure:
    """One small σ chart per layer for every source of an ``analysis.spectra.spectra`` frame
    (colours are applied afterwards by ``analysis.style.recolor``)."""
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
    colors = {"zero_shot": REFERENCE_COLORS["zero_shot"], "accuracy": REFERENCE_COLORS["merged"],
              "finetuned": REFERENCE_COLORS["finetuned"]}
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


FIG3A_SYMBOLS = {"Task Arithmetic": "star", "Iso-C": "triangle-up"}


def fig3a_scatter(points: pd.DataFrame, corr: Mapping[str, float] | None, task_colors: Mapping[str, str]) -> go.Figure:
    """NAI vs SAR_avg in the layout of Marczak et al.'s Fig. 3a: one marker symbol per method
    (★ Task Arithmetic, ▲ Iso-C, ● any other), one colour per task, no fit line; Pearson r in the title."""
    fig = go.Figure()
    for (task, method), part in points.groupby(["task", "method"], sort=False):
        fig.add_trace(go.Scatter(x=part["sar_avg"], y=part["nai"], mode="markers", name=f"{method}: {task}",
                                 marker={"size": 15, "symbol": FIG3A_SYMBOLS.get(str(method), "circle"),
                                         "color": task_colors.get(str(task), SUM_COLOR), "opacity": 0.9},
                                 hovertemplate=f"{method} · {task}<br>SAR_avg %{{x:.3f}}<br>NAI %{{y:.3f}}"
                                               "<extra></extra>"))
    title = "SAR_avg vs NAI (Fig. 3a layout)"
    if corr and np.isfinite(corr.get("pearson", np.nan)):
        title += f" · Pearson r = {corr['pearson']:.2f}, n = {corr['n']}"
    return _layout(fig, title, "SAR_avg", "NAI")
