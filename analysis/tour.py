"""The Learn tour's content, in the order of Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025: Fig. 1 (three spectra) → task
matrices → Fig. 2 (flattening, Iso-C, Sec. 3) → Fig. 3a (SAR against NAI, Eq. 5–6) → Fig. 4
(interpolating TA → Iso-C) → Iso-CTS (Sec. 4, Algorithm 1) → Fig. 5 (the common fraction) → the
other methods → Table 1 beside a real zoo.

The geometry (directions, spectra, subspaces) is shown on the toy of ``analysis.toy``; what the
toy is too small to show (average accuracy, SAR tracking NAI) on a real zoo's numbers
(``analysis.tour_zoo.ZooEvidence``), beside the paper's published ones (``analysis.fig3a``).

Every sentence that depends on numbers is generated from them as a ``Claim``: its text, the two
numbers it compares and the relation it asserts, so a test can check every claim at every slider
setting. Fixed text states only definitions. A step has a short ``lead`` (at most LEAD_WORDS
words: the presenter's screen) and a ``detail`` (the page and the handout add it).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from analysis import fig3a, figures, toy
from analysis.alpha import ALPHA_GRID
from analysis.correlation import correlation
from analysis.sar import DEFAULT_RULE, K_RULES, rank_by_rule, sar
from analysis.style import TASK_PALETTE, method_color, style_figure
from analysis.tour_zoo import ZooEvidence
from merging.methods.iso import common_rank
from merging.registry import get_method

EXPORT_SIZE = (1200, 675)  # px of every exported figure (16:9 slide)
LEAD_WORDS = 60  # at most, per step on the presenter's screen
CITATION = ("Marczak et al., “No Task Left Behind: Isotropic Model Merging with Common and Task-Specific "
            "Subspaces”, ICML 2025, arXiv:2502.04959")
SHORT_CITATION = "Marczak et al., ICML 2025 (arXiv:2502.04959)"
SHARED_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))
BETAS = tuple(round(0.1 * i, 1) for i in range(11))
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(11))
NAI_FLOOR = -1.0  # toy NAI axes start here; a value below is named in the caption


@dataclass(frozen=True)
class TourState:
    """Everything the tour's numbers depend on (the page keeps it in the URL)."""

    shared: float = toy.DEFAULT_SHARED
    weak: float = toy.DEFAULT_WEAK
    fraction: float = toy.DEFAULT_FRACTION
    rule: str = DEFAULT_RULE
    value: float = K_RULES[DEFAULT_RULE].default

    def describe(self) -> str:
        return (f"toy: shared {self.shared:g}, weak task {self.weak:g}, Iso-CTS f {self.fraction:g}; "
                f"k_M: {'figure rule' if self.rule == 'figure' else 'Eq. 6'} {self.value:g}")


# -- claims --------------------------------------------------------------------------------------

RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, "<": lambda a, b: a < b, "≈": lambda a, b: a == b,
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class Claim:
    """A generated sentence, the numbers it is about and the relation it asserts between them,
    compared at the precision the sentence prints (``places`` decimals)."""

    text: str
    left: float
    relation: str
    right: float
    places: int = 2

    def holds(self) -> bool:
        return RELATIONS[self.relation](round(self.left, self.places), round(self.right, self.places))


def versus(a: float, b: float, more: str, less: str, same: str, places: int = 2) -> Claim:
    """The template that is true of ``a`` against ``b`` at ``places`` decimals ({a} and {b} in it
    are formatted with that precision)."""
    ra, rb = round(a, places), round(b, places)
    relation, template = (">", more) if ra > rb else ("<", less) if ra < rb else ("≈", same)
    return Claim(template.format(a=f"{a:.{places}f}", b=f"{b:.{places}f}"), a, relation, b, places)


def lowest(values: Mapping[str, float], what: str) -> Claim:
    """"<name> has the lowest <what> (v)": the minimum of ``values``, compared with the others'."""
    name = min(values, key=values.__getitem__)
    others = [v for k, v in values.items() if k != name]
    return Claim(f"{name} has the lowest {what} ({values[name]:.2f})", values[name], "<=", min(others))


def best(values: Mapping[float, float], label: str, at: str, places: int = 2, unit: str = "") -> Claim:
    """"the best <label>, v, is at <at>x": the maximum of ``values`` {x: v} (the first x on ties)."""
    x = max(values, key=lambda k: (round(values[k], places), -k))
    return Claim(f"the best {label}, {values[x]:.{places}f}{unit}, is at {at}{x:g}", values[x], ">=",
                 max(values.values()), places)


STRENGTH_BANDS = ((0.7, "strong"), (0.5, "moderate"), (0.3, "weak"), (-0.3, "none to speak of"), (-1.01, "inverse"))


def strength_words(r: float) -> str:
    """A plain-words reading of a correlation coefficient."""
    if not np.isfinite(r):
        return "undefined (too few points)"
    return next(word for bound, word in STRENGTH_BANDS if r >= bound)


def correlation_claim(r: float, n: int, where: str) -> Claim:
    """"<where> r = x over n points: <strength>", asserting r is in the named band."""
    word = strength_words(r)
    bound = next((b for b, w in STRENGTH_BANDS if w == word), -1.01)
    return Claim(f"{where} r = {r:.2f} over {n} points ({word})", r if np.isfinite(r) else -1.01, ">=", bound)


# -- the toy at one state -------------------------------------------------------------------------

@dataclass(frozen=True)
class ToyResults:
    """The toy at one state, merged by the tour's methods with α tuned per method."""

    state: TourState
    zoo: toy.ToyZoo
    deltas: list[torch.Tensor]
    merges: dict[str, toy.ToyMerge]

    @property
    def tasks(self) -> list[str]:
        return self.zoo.tasks

    @property
    def weak(self) -> int:
        return len(self.tasks) - 1

    def nai(self, method: str) -> list[float]:
        return self.merges[method].nai

    def mean_nai(self, method: str) -> float:
        return float(np.mean(self.merges[method].nai))

    def sar(self, method: str) -> list[float]:
        """SAR of every task against ``method``'s update from θ0, ties ordered by the TA sum."""
        total = sum(self.deltas)
        s = self.state
        return [sar(d, self.merges[method].update, s.value, s.rule, reference=total) for d in self.deltas]

    def k_m(self, method: str) -> int:
        return rank_by_rule(toy.singular_values(self.merges[method].update), self.state.rule, self.state.value)


@lru_cache(maxsize=128)
def toy_results(state: TourState) -> ToyResults:
    """The toy merged at ``state`` (cached: the same object for the same state; never mutate it)."""
    zoo = toy.toy_zoo(state.shared, state.weak)
    params = {"iso_cts": {"common_fraction": state.fraction}}
    merges = {m: toy.merge(zoo, m, params.get(m)) for m in (*toy.TOUR_METHODS, *toy.OTHER_METHODS)}
    return ToyResults(state, zoo, toy.task_matrices(zoo), merges)


@lru_cache(maxsize=64)
def _shared_rows(weak: float, fraction: float, methods: tuple[str, ...]) -> tuple[tuple[float, str, float], ...]:
    rows = []
    for shared in SHARED_SWEEP:
        zoo = toy.toy_zoo(shared, weak)
        for m in methods:
            params = {"common_fraction": fraction} if m == "iso_cts" else None
            rows.append((shared, m, float(np.mean(toy.merge(zoo, m, params).nai))))
    return tuple(rows)


def shared_sweep(weak: float, fraction: float, methods: tuple[str, ...] = toy.TOUR_METHODS) -> pd.DataFrame:
    """Mean toy NAI (α tuned) per method as the shared part goes 0 → 1: shared, method, nai."""
    return pd.DataFrame(_shared_rows(weak, fraction, tuple(methods)), columns=["shared", "method", "nai"])


def interpolation_sweep(shared: float, weak: float) -> pd.DataFrame:
    """Toy NAI along TA → Iso-C (``toy.interpolate``): beta, alpha, one column per task, mean."""
    zoo = toy.toy_zoo(shared, weak)
    rows = []
    for beta in BETAS:
        m = toy.interpolate(zoo, beta)
        rows.append({"beta": beta, "alpha": m.alpha, **dict(zip(zoo.tasks, m.nai)), "mean": float(np.mean(m.nai))})
    return pd.DataFrame(rows)


def toy_fraction_sweep(shared: float, weak: float) -> pd.DataFrame:
    """Mean toy NAI of Iso-CTS (α tuned) at f = 0, 0.1, …, 1: fraction, k, nai."""
    zoo = toy.toy_zoo(shared, weak)
    return pd.DataFrame([{"fraction": f, "k": common_rank(toy.SIZE, toy.TASKS, f)[0],
                          "nai": float(np.mean(toy.merge(zoo, "iso_cts", {"common_fraction": f}).nai))}
                         for f in FRACTIONS])


# -- figure helpers ---------------------------------------------------------------------------------

@dataclass(eq=False)
class TourFigure:
    """A titled, captioned figure, drawn on first use (``make``), so a step's text and claims cost no
    plotting; pickling draws it (the page caches built steps)."""

    key: str
    title: str
    caption: str
    make: Callable[[], go.Figure] | None = field(repr=False)
    drawn: go.Figure | None = field(default=None, repr=False)

    @property
    def figure(self) -> go.Figure:
        if self.drawn is None:
            self.drawn = self.make()
        return self.drawn

    def __getstate__(self) -> dict:
        return {**self.__dict__, "drawn": self.figure, "make": None}


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    lead: str  # markdown, at most LEAD_WORDS words: what the presenter shows
    detail: str = ""  # markdown: what the page and the handout add
    figures: list[TourFigure] = field(default_factory=list)
    link: tuple[str, str] | None = None  # (page, label) of the view that shows it on a zoo
    claims: tuple[Claim, ...] = ()

    @property
    def text(self) -> str:
        return self.lead + (f"\n\n{self.detail}" if self.detail else "")


def words(markdown: str) -> int:
    """Words a reader sees (markdown marks and formula symbols count as nothing)."""
    return len([w for w in re.sub(r"[*_`]", "", markdown).split() if re.search(r"[A-Za-z0-9]", w)])


def _name(method: str) -> str:
    return get_method(method).display_name


def _titled(fig: go.Figure, title: str, source: str, height: int = 360) -> go.Figure:
    """House layout plus what a pasted SVG must carry: the title, a subtitle naming the settings
    (``source``) and the paper, and the legend right of the plot, where it can cover neither the
    plot nor the title (plotly widens the right margin for it, so it is never clipped)."""
    style_figure(fig, height=height)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", font_size=16,
                                 subtitle=dict(text=f"{source}<br>after {SHORT_CITATION}", font=dict(size=11, color="#666"))),
                      margin=dict(t=95, l=10, r=10, b=10),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    return fig


def presenter_style(fig: go.Figure, height: int) -> go.Figure:
    """Lecture-hall type on a figure (a copy the page owns): every chart text at 20 px or more."""
    fig.update_layout(font_size=20, title_font_size=26, title_subtitle_font_size=20, legend_font_size=20,
                      legend_title_font_size=20,
                      height=height, margin=dict(t=150), uniformtext=dict(minsize=20, mode="show"))
    fig.update_annotations(font_size=20)
    for axes in (fig.update_xaxes, fig.update_yaxes):  # explicit: Streamlit's chart theme sets 12 px ticks
        axes(tickfont_size=20, title_font_size=22)
        axes(tickfont_size=27, selector=dict(type="log"))  # plotly draws the digits between decades at 3/4 size
    fig.update_traces(textfont_size=20, selector=dict(type="bar"))
    return fig


def per_task_bars(r: ToyResults, methods: tuple[str, ...], values: Callable[[str], list[float]],
                  title: str, y_title: str) -> go.Figure:
    """Side-by-side bars, one group per task, one colour per method, values printed on the bars;
    a toy NAI axis starts at NAI_FLOOR (values below it are named in the caption)."""
    fig = go.Figure([go.Bar(x=r.tasks, y=values(m), name=_name(m), marker_color=method_color(m),
                            text=[f"{v:.2f}" for v in values(m)], textposition="outside", cliponaxis=False,
                            hovertemplate=f"{_name(m)}<br>%{{x}}: %{{y:.3f}}<extra></extra>") for m in methods])
    fig.update_layout(barmode="group")
    low = min(min(values(m)) for m in methods)
    fig.update_yaxes(title=y_title, range=[max(min(low, 0.0), NAI_FLOOR) - 0.05, 1.15] if y_title == "toy NAI" else None)
    return _titled(fig, title, r.state.describe())


def below_floor(r: ToyResults, methods: Sequence[str]) -> str:
    """The caption's note for toy NAI values below the axis (NAI_FLOOR), or ""."""
    out = [f"{_name(m)} on {t}: {v:.2f}" for m in methods for t, v in zip(r.tasks, r.nai(m)) if v < NAI_FLOOR]
    return f" Below the axis (it starts at {NAI_FLOOR:g}): " + "; ".join(out) + "." if out else ""


def spectrum_lines(curves: dict[str, tuple[torch.Tensor, str]], title: str, source: str, log: bool = False) -> go.Figure:
    """σ_i against i, one line per {name: (σ, colour)}."""
    fig = go.Figure([go.Scatter(x=list(range(1, len(s) + 1)), y=[float(v) for v in s], name=name,
                                mode="lines+markers", line=dict(color=color, width=3),
                                hovertemplate=f"{name}<br>σ_%{{x}} = %{{y:.3f}}<extra></extra>")
                     for name, (s, color) in curves.items()])
    fig.update_xaxes(title="index i (largest first)", dtick=1)
    fig.update_yaxes(title="σ_i" + (" (log)" if log else ""), type="log" if log else "linear")
    return _titled(fig, title, source)


def _task_colors(tasks: Sequence[str]) -> dict[str, str]:
    return {t: TASK_PALETTE[i % len(TASK_PALETTE)] for i, t in enumerate(tasks)}


def _alphas(r: ToyResults, methods: Sequence[str]) -> str:
    return "α tuned per method: " + ", ".join(f"{_name(m)} {r.merges[m].alpha:g}" for m in methods) + "."


# -- 1 · Fig. 1 ----------------------------------------------------------------------------------------

def weak_chain(r: ToyResults) -> tuple[Claim, Claim, Claim]:
    """Who is left behind under TA, and what Iso-C and Iso-CTS do for the weak task."""
    w = r.weak
    ta, iso, cts = (r.nai(m)[w] for m in toy.TOUR_METHODS)
    return (lowest(dict(zip(r.tasks, r.nai("task_arithmetic"))), "toy NAI under TA"),
            versus(iso, ta, "Iso-C lifts the weak task from {b} to {a}", "Iso-C lowers the weak task from {b} to {a}",
                   "Iso-C leaves the weak task at {a}"),
            versus(cts, iso, "Iso-CTS lifts it further, to {a}", "Iso-CTS gives it less, {a}",
                   "Iso-CTS gives it the same {a}"))


def step_fig1(r: ToyResults, zoo: ZooEvidence | None) -> Step:
    left, lift, further = weak_chain(r)
    lead = ("A **task vector** τt = θt − θ0 is what fine-tuning on task t changed. **Task Arithmetic** (TA) adds "
            f"them; **Iso-C** and **Iso-CTS** flatten the sum's spectrum. On the toy, {left.text}; {lift.text}; "
            f"{further.text}.")
    detail = (f"The toy is one {toy.SIZE}×{toy.SIZE} layer fine-tuned on {toy.TASKS} tasks: each task matrix is a "
              "part every task shares plus a part of its own (the *shared* slider moves weight between them), and "
              f"task {toy.TASKS} is scaled by the *weak task* slider. Its accuracy is how well a merged layer "
              "reproduces the fine-tuned layer's output directions on the task's inputs; its **toy NAI** is "
              "(q(merged) − q(θ0)) / (q(θt) − q(θ0)): 1 loses nothing, 0 is no better than θ0, below 0 is worse. "
              "α is tuned per method for the best mean toy NAI. The paper's Fig. 1 shows the same three spectra for "
              "one layer of ViT-B/16.")
    curves = {f"{_name(m)} (α = {r.merges[m].alpha:g})":
              (toy.singular_values(r.merges[m].alpha * r.merges[m].delta), method_color(m)) for m in toy.TOUR_METHODS}
    src = r.state.describe()
    return Step("fig1", "1 · Fig. 1: one layer merged three ways", lead, detail, [
        TourFigure("fig1", "Spectra of α·Δ for TA, Iso-C and Iso-CTS", "Each merged update scaled by its tuned α; "
                   "log scale. TA's falls steeply; Iso-C's and Iso-CTS's are flat.",
                   lambda: spectrum_lines(curves, "Singular values of the merged updates (α·Δ)", src, log=True)),
        TourFigure("fig1_nai", "Toy NAI per task: TA, Iso-C and Iso-CTS", _alphas(r, toy.TOUR_METHODS)
                   + below_floor(r, toy.TOUR_METHODS),
                   lambda: per_task_bars(r, toy.TOUR_METHODS, r.nai, "Who is left behind?", "toy NAI")),
    ], ("spectra", "The three spectra on every layer of a real zoo"), (left, lift, further))


# -- 2 · task matrices ----------------------------------------------------------------------------

def rank_claim(ranks: Sequence[int]) -> Claim:
    text = (f"each task's designed part has rank {ranks[0]}" if len(set(ranks)) == 1
            else "the tasks' designed parts have ranks " + ", ".join(map(str, ranks)))
    return Claim(text, float(min(ranks)), "≈" if len(set(ranks)) == 1 else "<", float(max(ranks)), 0)


OVERLAP_FOUND = 0.9  # principal cosines at least this: the sum's top block is the shared part


def overlap_claim(cosines: Sequence[float]) -> Claim:
    shown = " and ".join(f"{c:.2f}" for c in cosines)
    low = min(cosines)
    if round(low, 2) >= OVERLAP_FOUND:
        return Claim(f"the sum's top {len(cosines)} directions are the shared part (principal cosines {shown})",
                     low, ">=", OVERLAP_FOUND)
    return Claim(f"the sum's top {len(cosines)} directions only partly find the shared part (principal cosines "
                 f"{shown})", low, "<", OVERLAP_FOUND)


def step_task_vectors(r: ToyResults) -> Step:
    ranks = rank_claim(toy.designed_ranks(r.state.shared, r.state.weak))
    overlap = overlap_claim(toy.sum_overlap(r.zoo))
    lead = ("Any matrix is a sum of rank-one pieces σi·ui viᵀ (its SVD); σ1 ≥ σ2 ≥ … say how much each direction "
            f"carries. Here {ranks.text}, plus a faint full-rank part. In the TA sum, shared directions add up: "
            f"{overlap.text}.")
    detail = ("Principal cosines compare two subspaces: 1 where they share a direction, 0 where they are "
              "orthogonal. A weak task's directions stay small in the sum.")
    colors = _task_colors(r.tasks)
    curves = {t: (toy.singular_values(d), colors[t]) for t, d in zip(r.tasks, r.deltas)}
    curves["TA sum"] = (toy.singular_values(sum(r.deltas)), method_color("task_arithmetic"))
    return Step("task_vectors", "2 · Task matrices and their spectra", lead, detail, [
        TourFigure("spectrum", "Spectra of the task matrices and of their sum",
                   f"σ of each Δt and of Σt Δt; ‖τ1‖F = {float(r.deltas[0].norm()):.3f}.",
                   lambda: spectrum_lines(curves, "Singular values of each Δt and of Σt Δt", r.state.describe())),
    ], ("spectra", "Spectra of a real zoo, layer by layer"), (ranks, overlap))


# -- 3 · Fig. 2: flattening ----------------------------------------------------------------------------

def zoo_versus(zoo: ZooEvidence | None, a: str, b: str) -> Claim | None:
    """Mean normalized accuracy of method ``a`` against ``b`` on the zoo, beside Table 1's."""
    if zoo is None:
        return None
    pa, pb = fig3a.TABLE1_NORMALIZED[a], fig3a.TABLE1_NORMALIZED[b]
    paper = f"the paper: {pa:.1f}% vs {pb:.1f}%"
    return versus(zoo.normalized[a], zoo.normalized[b],
                  f"on the {zoo.name} zoo {_name(a)} keeps {{a}}% of fine-tuned accuracy, {_name(b)} {{b}}% ({paper})",
                  f"on the {zoo.name} zoo {_name(a)} keeps only {{a}}% of fine-tuned accuracy, {_name(b)} {{b}}% ({paper})",
                  f"on the {zoo.name} zoo {_name(a)} and {_name(b)} both keep {{a}}% ({paper})", places=1)


def gap_words(zoo: ZooEvidence, a: str, b: str) -> str:
    """The difference to the paper, named: the zoo's gap a − b against Table 1's."""
    live = zoo.normalized[a] - zoo.normalized[b]
    paper = fig3a.TABLE1_NORMALIZED[a] - fig3a.TABLE1_NORMALIZED[b]
    return (f"The gap {_name(a)} − {_name(b)} is {live:+.1f} points on the {zoo.name} zoo and {paper:+.1f} in Table 1 "
            f"(ViT-B/32, 8 tasks)" + (": same sign, " + ("smaller" if abs(live) < abs(paper) else "larger") + " here."
                                       if np.sign(live) == np.sign(paper) and live != 0 else ": the sign differs."))


def step_flattening(r: ToyResults, zoo: ZooEvidence | None) -> Step:
    _, lift, _ = weak_chain(r)
    mean = versus(r.mean_nai("iso_c"), r.mean_nai("task_arithmetic"),
                  "its mean toy NAI beats TA's ({a} vs {b})", "its mean toy NAI trails TA's ({a} vs {b})",
                  "its mean toy NAI equals TA's ({a})")
    real = zoo_versus(zoo, "iso_c", "task_arithmetic")
    lead = ("**Iso-C** keeps the directions of the TA sum S = U Σ Vᵀ and gives each the mean singular value: "
            f"Δ = σ̄ U Vᵀ. {lift.text}; {mean.text}."
            + (f" {real.text[0].upper()}{real.text[1:]}." if real else ""))
    detail = ("A flat spectrum gives a weak task's directions the same weight as the dominant shared ones. "
              f"σ̄ averages all {toy.SIZE} singular values; were the sum rank-deficient, Iso-C would raise directions "
              "no task uses (the toy keeps a faint full-rank part in every task to stay clear of it)."
              + (f" {gap_words(zoo, 'iso_c', 'task_arithmetic')}" if zoo else ""))
    curves = {"TA sum (before)": (toy.singular_values(sum(r.deltas)), method_color("task_arithmetic")),
              "Iso-C (after)": (toy.singular_values(r.merges["iso_c"].delta), method_color("iso_c"))}
    pair = ("task_arithmetic", "iso_c")
    return Step("flattening", "3 · Fig. 2: flattening the spectrum (Iso-C)", lead, detail, [
        TourFigure("flat", "Before and after flattening",
                   "σ of the TA sum and of Iso-C's update (α = 1): every Iso-C σ equals the sum's mean σ̄.",
                   lambda: spectrum_lines(curves, "Iso-C flattens the spectrum of the TA sum", r.state.describe())),
        TourFigure("flat_nai", "Toy NAI per task: TA vs Iso-C", _alphas(r, pair) + below_floor(r, pair),
                   lambda: per_task_bars(r, pair, r.nai, "Toy NAI per task, TA and Iso-C", "toy NAI")),
    ], ("spectra", "Before and after flattening on a real zoo"), tuple(c for c in (lift, mean, real) if c))


# -- 4 · Fig. 3a: SAR against NAI ---------------------------------------------------------------------

def toy_points(r: ToyResults) -> pd.DataFrame:
    """The toy's SAR–NAI points of TA and Iso-C: method, task, sar_avg (one layer), nai."""
    return pd.DataFrame([{"method": m, "task": t, "sar_avg": s, "nai": n} for m in ("task_arithmetic", "iso_c")
                         for t, s, n in zip(r.tasks, r.sar(m), r.nai(m))])


def scatter_figure(points: pd.DataFrame, title: str, source: str) -> go.Figure:
    """SAR_avg against NAI in Fig. 3a's layout (★ TA, ▲ Iso-C, one colour per task)."""
    stats = correlation(points["sar_avg"], points["nai"])
    shown = points.assign(method=points["method"].map(_name))
    fig = figures.fig3a_scatter(shown, stats, _task_colors(list(dict.fromkeys(points["task"]))))
    for trace in fig.data:  # one legend entry per task (its colour); the symbols are named in the legend's title
        method, _, task = trace.name.partition(": ")
        trace.update(name=task, legendgroup=task, showlegend=method == _name("task_arithmetic"))
    _titled(fig, f"{title} · Pearson r = {stats['pearson']:.2f}, n = {stats['n']}", source, height=380)
    return fig.update_layout(legend_title_text="★ TA  ▲ Iso-C")


def _rule_words(state: TourState) -> str:
    if state.rule == "eq6":
        return (f"Eq. 6 with ε = {state.value:g}: the fewest directions whose left-out Frobenius norm is at most "
                f"ε‖ΔM‖F, so at least {100 * (1 - state.value ** 2):.2f}% of the energy is kept")
    return (f"the authors' figure rule with threshold {state.value:g}: the directions before the first whose "
            f"cumulative norm √(Σ_{{i≤k}} σi² / Σ σi²) exceeds {state.value:g}")


def step_alignment(r: ToyResults, zoo: ZooEvidence | None) -> Step:
    paper = f"The paper's Fig. 3a finds ρ_TA = {fig3a.RHO_TA:.2f} within Task Arithmetic (ViT-B/16, 8 tasks)"
    claims: list[Claim] = []
    if zoo is not None:
        both = correlation_claim(zoo.pearson, zoo.n, f"on the {zoo.name} zoo, TA and Iso-C give")
        within = versus(zoo.pearson_ta, fig3a.RHO_TA, "within TA r = {a}, above the paper's {b}",
                        "within TA r = {a}, below the paper's {b}", "within TA r = {a}, as in the paper")
        claims += [both, within]
        live = f"; {both.text}; {within.text}"
    else:
        live = "; no zoo with evaluation data is open, so only the toy's points are drawn"
    lead = ("**SAR**(Δt, ΔM) = ‖Π Δt‖F / ‖Δt‖F: the share of task t inside the merge's top-k_M directions. **NAI** = "
            f"(acc − zero-shot) / (fine-tuned − zero-shot). {paper}{live}.")
    tp = toy_points(r)
    toy_r = correlation_claim(correlation(tp["sar_avg"], tp["nai"])["pearson"], len(tp), "the toy's")
    k_iso = r.k_m("iso_c")
    iso_sar = min(r.sar("iso_c"))
    flat = Claim(f"Iso-C's flat spectrum keeps k_M = {k_iso} of {toy.SIZE} directions, so its SAR is at least "
                 f"{iso_sar:.2f} for every task", iso_sar, ">=", min(r.sar("iso_c")))
    claims += [toy_r, flat]
    detail = (f"k_M is read off the merge's own spectrum, here by {_rule_words(r.state)}. On the {toy.SIZE}×{toy.SIZE} "
              f"toy {flat.text}: too few directions for SAR to tell tasks apart, and {toy_r.text}. The real zoo's "
              "SAR_avg averages SAR over every matrix layer.")
    figs = []
    if zoo is not None:
        figs.append(TourFigure("zoo_points", f"SAR_avg vs NAI on the {zoo.name} zoo, in Fig. 3a's layout",
                               f"Real merges, α chosen on validation; k_M by {zoo.rule} {zoo.value:g}. ★ TA, ▲ Iso-C, "
                               "one colour per task.",
                               lambda: scatter_figure(zoo.points, f"The {zoo.name} zoo: SAR_avg vs NAI",
                                                      f"{zoo.name} zoo, k_M {zoo.rule} {zoo.value:g}")))
    figs.append(TourFigure("toy_points", "SAR vs toy NAI on the toy", "★ TA, ▲ Iso-C, one colour per task; one layer, "
                           "so SAR_avg is that layer's SAR.", lambda: scatter_figure(tp, "The toy: SAR vs toy NAI",
                                                                                     r.state.describe())))
    return Step("alignment", "4 · Fig. 3a: does alignment predict accuracy?", lead, detail, figs,
                ("alignment", "SAR heatmaps and the SAR–NAI correlation on a real zoo"), tuple(claims))


# -- 5 · Fig. 4: TA → Iso-C ----------------------------------------------------------------------------

def step_interpolation(r: ToyResults) -> Step:
    sweep = interpolation_sweep(r.state.shared, r.state.weak)
    weak_name = r.tasks[r.weak]
    ends = sweep.set_index("beta")
    rise = versus(ends.loc[1.0, weak_name], ends.loc[0.0, weak_name], "the weak task goes up from {b} to {a}",
                  "the weak task goes down from {b} to {a}", "the weak task stays at {a}")
    top = best(dict(zip(sweep["beta"], sweep["mean"])), "mean toy NAI", "β = ")
    lead = ("Move the sum's spectrum towards flat: Δβ = U((1 − β)Σ + β σ̄ I)Vᵀ, so β = 0 is TA and β = 1 is Iso-C, "
            f"with α tuned at every β. From β = 0 to 1 {rise.text}; {top.text}.")
    detail = ("The paper's Fig. 4 interpolates the same way between TA's spectrum and the flat one. Each β is one "
              "merge; its α is tuned like every method's.")
    return Step("interpolation", "5 · Fig. 4: from Task Arithmetic to Iso-C", lead, detail, [
        TourFigure("interp", "Toy NAI along TA → Iso-C", "α per β: " + ", ".join(
            f"{b:g}: {a:g}" for b, a in zip(sweep["beta"], sweep["alpha"])) + ".",
            lambda: interpolation_figure(r, sweep)),
    ], ("spectra", "Spectra of a real zoo"), (rise, top))


def interpolation_figure(r: ToyResults, sweep: pd.DataFrame) -> go.Figure:
    """Toy NAI per task (thin) and on average (thick) against β."""
    fig = go.Figure()
    for i, t in enumerate(r.tasks):
        fig.add_trace(go.Scatter(x=sweep["beta"], y=sweep[t], name=t, mode="lines+markers",
                                 line=dict(color=TASK_PALETTE[i], width=2)))
    fig.add_trace(go.Scatter(x=sweep["beta"], y=sweep["mean"], name="mean", mode="lines+markers",
                             line=dict(color="#212529", width=4)))
    fig.update_xaxes(title="β (0 = TA, 1 = Iso-C)")
    fig.update_yaxes(title="toy NAI (α tuned)")
    return _titled(fig, "Flattening step by step: toy NAI against β", r.state.describe())


# -- 6 · Iso-CTS ----------------------------------------------------------------------------------------

def stacked_figure(r: ToyResults) -> go.Figure:
    """Iso-CTS's stacked σ before flattening, coloured by source."""
    blocks = toy.iso_cts_blocks(r.deltas, r.state.fraction)
    k, s = len(blocks[0][1]), len(blocks[1][1]) if len(blocks) > 1 else 0
    fig, start = go.Figure(), 1
    colors = {"common": method_color("iso_cts"), **_task_colors(r.tasks)}
    for source, sigma in blocks:
        xs = list(range(start, start + len(sigma)))
        fig.add_trace(go.Bar(x=xs, y=[float(v) for v in sigma], name=source, marker_color=colors[source],
                             hovertemplate=f"{source}<br>slot %{{x}}: σ = %{{y:.3f}}<extra></extra>"))
        start += len(sigma)
    fig.add_hline(y=float(torch.cat([b[1] for b in blocks]).mean()), line_dash="dash", line_color="#868E96",
                  annotation_text="σ̄ after flattening")
    fig.update_xaxes(title="slot in the stacked basis", dtick=1)
    fig.update_yaxes(title="σ before flattening")
    return _titled(fig, f"Iso-CTS stacks k = {k} common + {toy.TASKS} × s = {s} task-specific directions",
                   r.state.describe())


def step_iso_cts(r: ToyResults, zoo: ZooEvidence | None) -> Step:
    k, s = common_rank(toy.SIZE, toy.TASKS, r.state.fraction)
    w = r.weak
    weak = versus(r.nai("iso_cts")[w], r.nai("iso_c")[w], "the weak task gets {a} (Iso-C {b})",
                  "the weak task gets {a}, less than Iso-C's {b}", "the weak task gets {a}, as with Iso-C")
    mean = versus(r.mean_nai("iso_cts"), r.mean_nai("iso_c"), "the mean toy NAI is {a}, above Iso-C's {b}",
                  "the mean toy NAI is {a}, below Iso-C's {b}", "the mean toy NAI is {a}, as Iso-C's")
    lead = ("**Iso-CTS** keeps the sum's top-k directions (common), adds each task's top-s directions of its residual "
            "Δt − Uk Ukᵀ Δt, orthogonalises the stacked bases, then flattens. "
            f"Here f = {r.state.fraction:g} gives k = {k}, s = {s}: {weak.text}; {mean.text}.")
    r_, t_ = toy.SIZE, toy.TASKS
    k0, s0 = common_rank(r_, t_, 0.0)
    real = zoo_versus(zoo, "iso_cts", "iso_c")
    overlap = overlap_claim(toy.sum_overlap(r.zoo)) if k == toy.SHARED_RANK else None
    detail = ("How k and s follow from the common fraction f and the rank r: k0 = ⌊r·f⌋, "
              "s = min(round((r − k0)/T), ⌊r/T⌋), k = r − T·s. The cap s ≤ ⌊r/T⌋ keeps the T·s task directions within "
              f"the rank: at f = 0 the toy (r = {r_}, T = {t_}) gets s = {s0} and k = {k0}, not a negative k. "
              "The stacked left and right bases U* = [Uk | task directions] and V* are replaced by their nearest "
              "orthonormal matrices (polar factors), and every singular value by the mean σ̄ of the stacked ones. "
              "At f = 1, s = 0 and Iso-CTS is Iso-C."
              + (f" With k = {k}, {overlap.text}." if overlap else "")
              + (f" {real.text[0].upper()}{real.text[1:]}. {gap_words(zoo, 'iso_cts', 'iso_c')}" if real else ""))
    claims = tuple(c for c in (weak, mean, overlap, real) if c)
    return Step("iso_cts", "6 · Iso-CTS: common and task-specific subspaces", lead, detail, [
        TourFigure("stacked", "Iso-CTS's stacked singular values, by source",
                   "The common block (top-k σ of the sum), then each task's top-s residual σ; flattening sets every "
                   "slot to the dashed σ̄.", lambda: stacked_figure(r)),
        TourFigure("cts_nai", "Toy NAI per task: TA, Iso-C and Iso-CTS",
                   _alphas(r, toy.TOUR_METHODS) + below_floor(r, toy.TOUR_METHODS),
                   lambda: per_task_bars(r, toy.TOUR_METHODS, r.nai, "Toy NAI per task, three merges", "toy NAI")),
    ], ("common", "Accuracy as the common fraction moves, on a real zoo"), claims)


# -- 7 · Fig. 5: the common fraction ----------------------------------------------------------------------

def curve_figure(x: Sequence[float], y: Sequence[float], name: str, y_title: str, title: str, source: str) -> go.Figure:
    """One thick Iso-CTS-coloured line of ``y`` against the common fraction ``x``."""
    fig = go.Figure(go.Scatter(x=list(x), y=list(y), name=name, mode="lines+markers", showlegend=True,
                               line=dict(color=method_color("iso_cts"), width=4)))
    fig.update_xaxes(title="common fraction f (1 = Iso-C)")
    fig.update_yaxes(title=y_title)
    return _titled(fig, title, source)


def step_fraction(r: ToyResults, zoo: ZooEvidence | None) -> Step:
    toy_curve = toy_fraction_sweep(r.state.shared, r.state.weak)
    toy_best = best(dict(zip(toy_curve["fraction"], toy_curve["nai"])), "mean toy NAI", "f = ")
    claims = [toy_best]
    if zoo is not None and zoo.curve is not None and len(zoo.curve):
        curve = zoo.curve.set_index("fraction")["normalized"]
        real_best = best(curve.to_dict(), f"normalized accuracy on the {zoo.name} zoo", "f = ", places=1, unit="%")
        ends = versus(curve.iloc[-1], curve.iloc[0], "f = 1 (Iso-C) keeps {a}%, more than f = 0's {b}%",
                      "f = 1 (Iso-C) keeps {a}%, less than f = 0's {b}%", "f = 1 (Iso-C) and f = 0 both keep {a}%",
                      places=1)
        claims += [real_best, ends]
        lead_live = f"{real_best.text}; {ends.text}"
        draw = lambda: curve_figure(curve.index, curve.to_numpy(), f"{zoo.name} zoo", "normalized accuracy (%)",  # noqa: E731
                                    f"The {zoo.name} zoo: Iso-CTS against f", f"{zoo.name} zoo, α on validation at every f")
    else:
        lead_live = "no zoo with evaluation data is open, so the toy's curve is drawn"
        draw = lambda: curve_figure(toy_curve["fraction"], toy_curve["nai"], "toy", "mean toy NAI",  # noqa: E731
                                    "The toy: Iso-CTS against f", r.state.describe())
    lead = (f"How much of the rank should the common subspace get? The paper's Fig. 5 sweeps f. {lead_live[0].upper()}"
            f"{lead_live[1:]}.")
    ks = sorted(set(toy_curve["k"]))
    detail = f"On the toy f only takes k to {', '.join(map(str, ks))}, and {toy_best.text}. Every point tunes α again."
    return Step("fraction", "7 · Fig. 5: accuracy against the common fraction", lead, detail, [
        TourFigure("fraction", "Iso-CTS against its common fraction", "Each point is a merge with its own α.", draw),
    ], ("common", "The same sweep, per task, on a real zoo"), tuple(claims))


# -- 8 · the other methods --------------------------------------------------------------------------------

def _runs(mask: pd.Series) -> str:
    """The index ranges where ``mask`` holds, e.g. "0–0.4 and 0.8–1"."""
    runs, start, prev = [], None, None
    for x, on in mask.items():
        if on and start is None:
            start = x
        if not on and start is not None:
            runs.append((start, prev))
            start = None
        prev = x
    if start is not None:
        runs.append((start, prev))
    return " and ".join(f"{a:g}" if a == b else f"{a:g}–{b:g}" for a, b in runs)


def where_ta_wins(sweep: pd.DataFrame) -> tuple[str, pd.Series]:
    """The shared values where TA's mean toy NAI beats both Iso methods, in words, and the mask."""
    wide = sweep.pivot(index="shared", columns="method", values="nai")
    mask = wide["task_arithmetic"].round(2) > wide[["iso_c", "iso_cts"]].max(axis=1).round(2)
    if mask.all():
        return "TA has the best mean toy NAI at every shared value", mask
    if not mask.any():
        return "TA never has the best mean toy NAI across shared = 0–1", mask
    return f"TA has the best mean toy NAI at shared = {_runs(mask)}", mask


def step_others(r: ToyResults) -> Step:
    methods = (*toy.TOUR_METHODS, *toy.OTHER_METHODS)
    means = {_name(m): r.mean_nai(m) for m in methods}
    top = max(means, key=means.__getitem__)
    winner = Claim(f"{top} has the best mean toy NAI here ({means[top]:.2f})", means[top], ">=", max(means.values()))
    sweep = shared_sweep(r.state.weak, r.state.fraction)
    wins, _ = where_ta_wins(sweep)
    cart = r.merges["cart"].alpha
    cart_note = (f" CART's α sits at the grid's lower end ({cart:g}): on the toy it wants less than the grid offers."
                 if cart <= min(ALPHA_GRID) else "")
    lead = ("**TSV-M** keeps each task's top singular directions and orthogonalises them; **CART** adds low-rank "
            "centred task vectors to the weight average; **TIES** trims, elects signs and averages. "
            f"{winner.text}. {wins} (α re-tuned at each point).")
    detail = ("Mean toy NAI here: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()) + "." + cart_note)
    return Step("others", "8 · The other methods, and where Task Arithmetic wins", lead, detail, [
        TourFigure("others_nai", "Toy NAI per task for all six methods", _alphas(r, methods) + below_floor(r, methods),
                   lambda: per_task_bars(r, methods, r.nai, "Six merges of the same toy", "toy NAI")),
        TourFigure("sweep", "Mean toy NAI as the tasks share more",
                   f"Weak task at {r.state.weak:g}, Iso-CTS at f = {r.state.fraction:g}; every point re-tunes α.",
                   lambda: shared_figure(r, sweep)),
    ], ("merge", "Merge a real zoo with any method"), (winner,))


def shared_figure(r: ToyResults, sweep: pd.DataFrame) -> go.Figure:
    """Mean toy NAI per method against how much the tasks share, the current setting marked."""
    fig = go.Figure([go.Scatter(x=part["shared"], y=part["nai"], name=_name(str(m)), mode="lines+markers",
                                line=dict(color=method_color(str(m)), width=3))
                     for m, part in sweep.groupby("method", sort=False)])
    fig.add_vline(x=r.state.shared, line_dash="dot", line_color="#868E96", annotation_text="current")
    fig.update_xaxes(title="how much the tasks share")
    fig.update_yaxes(title="mean toy NAI (α tuned)")
    return _titled(fig, "Mean toy NAI against how much the tasks share", r.state.describe())


# -- 9 · Table 1 ------------------------------------------------------------------------------------------

TABLE1_METHODS = ("task_arithmetic", "iso_c", "iso_cts")


def table1_figure(zoo: ZooEvidence | None) -> go.Figure:
    """Table 1's normalized accuracies (grey) beside the zoo's (house colours)."""
    names, paper = [_name(m) for m in TABLE1_METHODS], [fig3a.TABLE1_NORMALIZED[m] for m in TABLE1_METHODS]
    fig = go.Figure(go.Bar(x=names, y=paper, name="paper, Table 1 (ViT-B/32)", marker_color="#ADB5BD",
                           text=[f"{v:.1f}" for v in paper], textposition="outside", cliponaxis=False))
    if zoo is not None:
        live = [zoo.normalized[m] for m in TABLE1_METHODS]
        fig.add_trace(go.Bar(x=names, y=live, name=f"{zoo.name} zoo (live)", text=[f"{v:.1f}" for v in live],
                             marker_color=[method_color(m) for m in TABLE1_METHODS], textposition="outside",
                             cliponaxis=False))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="normalized accuracy (%)", range=[0, 115])
    return _titled(fig, "Normalized accuracy, paper vs live", f"{zoo.name} zoo" if zoo else "paper only")


def step_table1(zoo: ZooEvidence | None) -> Step:
    paper = fig3a.TABLE1_NORMALIZED
    claims: list[Claim] = []
    if zoo is not None:
        first = max(TABLE1_METHODS, key=lambda m: zoo.normalized[m])
        top = Claim(f"on the {zoo.name} zoo {_name(first)} keeps the most ({zoo.normalized[first]:.1f}%)",
                    zoo.normalized[first], ">=", max(zoo.normalized[m] for m in TABLE1_METHODS), 1)
        cts_ta = versus(zoo.normalized["iso_cts"], zoo.normalized["task_arithmetic"],
                        "Iso-CTS keeps {a}% against TA's {b}%", "Iso-CTS keeps {a}%, below TA's {b}%",
                        "Iso-CTS and TA both keep {a}%", places=1)
        claims += [top, cts_ta]
        live_short, detail = f"{top.text[0].upper()}{top.text[1:]}; {cts_ta.text}.", gap_words(zoo, "iso_cts",
                                                                                                "task_arithmetic")
    else:
        live_short, detail = "No zoo with evaluation data is open, so only the paper's numbers are drawn.", ""
    lead = ("**Normalized accuracy** = acc(merged) / acc(fine-tuned), averaged over tasks. Table 1 of the paper "
            f"(ViT-B/32, 8 tasks): TA {paper['task_arithmetic']:.1f}%, Iso-C {paper['iso_c']:.1f}%, Iso-CTS "
            f"{paper['iso_cts']:.1f}%. {live_short}")
    return Step("table1", "9 · Table 1 beside a real zoo", lead, detail, [
        TourFigure("table1", "Normalized accuracy: the paper and the zoo", f"Source: {fig3a.TABLE1_SOURCE}; live "
                   "numbers: real merges, α chosen on validation.", lambda: table1_figure(zoo)),
    ], ("merge", "Every method's accuracy on a real zoo"), tuple(claims))


# -- the tour --------------------------------------------------------------------------------------------

STEP_KEYS = ("fig1", "task_vectors", "flattening", "alignment", "interpolation", "iso_cts", "fraction", "others",
             "table1")

BUILDERS: dict[str, Callable[[ToyResults, ZooEvidence | None], Step]] = {
    "fig1": step_fig1,
    "task_vectors": lambda r, z: step_task_vectors(r),
    "flattening": step_flattening,
    "alignment": step_alignment,
    "interpolation": lambda r, z: step_interpolation(r),
    "iso_cts": step_iso_cts,
    "fraction": step_fraction,
    "others": lambda r, z: step_others(r),
    "table1": lambda r, z: step_table1(z),
}


def build_step(key: str, state: TourState, zoo: ZooEvidence | None = None) -> Step:
    """One step at ``state`` (figures built fresh: the caller may restyle them)."""
    return BUILDERS[key](toy_results(state), zoo)


def tour(state: TourState, zoo: ZooEvidence | None = None) -> list[Step]:
    """Every step at ``state``; ``zoo`` adds a real zoo's numbers where the toy cannot show a claim."""
    return [build_step(k, state, zoo) for k in STEP_KEYS]


def export_config(name: str, fmt: str = "svg") -> dict:
    """plotly.js config: the modebar's camera button saves a fixed-size ``fmt`` image named ``name``."""
    width, height = EXPORT_SIZE
    return {"toImageButtonOptions": {"format": fmt, "filename": name, "width": width, "height": height, "scale": 1},
            "displaylogo": False}


def render_handout(steps: list[Step], state: TourState, title: str = "Isoscope · Learn tour") -> str:
    """One self-contained HTML page (plotly.js inlined once): every step's text, figures and captions,
    the settings and the paper's citation."""

    def md(text: str) -> str:
        out = html.escape(text)
        out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
        out = re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)
        return "".join(f"<p>{p}</p>" for p in out.split("\n\n"))

    parts, first = [], True
    for step in steps:
        parts.append(f"<section><h2>{html.escape(step.title)}</h2>{md(step.text)}")
        for f in step.figures:
            div = f.figure.to_html(full_html=False, include_plotlyjs=first, config=export_config(f"isoscope-{f.key}"),
                                   default_width=f"{EXPORT_SIZE[0] * 0.75:.0f}px")
            first = False
            parts.append(f"<figure>{div}<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}"
                         "</figcaption></figure>")
        parts.append("</section>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;font-size:17px;line-height:1.5}"
            "figcaption{color:#555;font-size:15px}section{margin-bottom:48px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Settings: {html.escape(state.describe())}.</p>"
            f"<p>After {html.escape(CITATION)}.</p>{''.join(parts)}</body></html>")
