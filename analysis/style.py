"""House colours and layout for every figure, in the app and in the HTML report alike: one fixed
colour per method (its registry entry's ``Method.color``, by registry name and by display name),
one per reference trace, and one per task (by position in the zoo's task list), so a method or a
task looks the same in every view."""

from __future__ import annotations

import plotly.graph_objects as go

# The traces that are not a method (methods take ``Method.color`` from the registry).
SUM_COLOR = "#495057"  # the Task Arithmetic sum before flattening (Task Arithmetic's own colour)
ACCENT = "#F76707"  # highlights: the ringed current point, the chosen α, normalized bars
REFERENCE_COLORS: dict[str, str] = {
    "task": "#ADB5BD",
    "zero_shot": "#CED4DA",
    "finetuned": "#212529",
    "merged": "#4C6EF5",
    "TA sum": SUM_COLOR,
    "average": "#212529",
}
# Tasks: a qualitative palette that avoids the method colours' hues where it can.
TASK_PALETTE = ("#1C7ED6", "#E8590C", "#37B24D", "#F03E3E", "#7048E8", "#0CA678", "#D6336C",
                "#F59F00", "#1098AD", "#74B816", "#5F3DC4", "#C2255C", "#364FC7", "#E67700")
TEMPLATE = "plotly_white"


def method_color(name: str) -> str:
    """The colour of a method by registry name, display name or reference name ("zero_shot")."""
    return method_colors().get(name, SUM_COLOR)


def method_colors() -> dict[str, str]:
    """Trace name → colour for every registered method (by registry name and by display name)
    and every reference trace."""
    from merging.registry import all_methods

    methods = all_methods().items()
    return {**REFERENCE_COLORS, **{n: m.color for n, m in methods}, **{m.display_name: m.color for _, m in methods}}


def task_colors(tasks: list[str]) -> dict[str, str]:
    """A stable colour per task, by position in the zoo's task list."""
    return {t: task_color(i) for i, t in enumerate(tasks)}


def task_color(i: int) -> str:
    return TASK_PALETTE[i % len(TASK_PALETTE)]


def palette(tasks: list[str]) -> dict[str, str]:
    """Trace name → colour for every task and every method."""
    return {**task_colors(tasks), **method_colors()}


def recolor(fig: go.Figure, colors: dict[str, str]) -> go.Figure:
    """Give every trace whose name is in ``colors`` its house colour (line and marker), so a task
    or a method has the same colour in every view, whatever order a builder met it in."""
    for trace in fig.data:
        color = colors.get(trace.name)
        if color is None:
            continue
        if getattr(trace, "line", None) is not None and trace.type == "scatter":
            trace.line.color = color
        if trace.type in ("scatter", "bar"):
            trace.marker.color = color
    return fig


def style_figure(fig: go.Figure, height: int | None = None) -> go.Figure:
    """House layout for the app's compact charts: white background, small margins, legend on top."""
    fig.update_layout(template=TEMPLATE, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=1, xanchor="right"),
                      hoverlabel=dict(namelength=-1))
    if height:
        fig.update_layout(height=height)
    return fig
