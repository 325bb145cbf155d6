"""The Learn tour's content: seven steps in the order of Marczak et al., "No Task Left Behind",
ICML 2025 (task vectors → alignment and NAI, Sec. 3 and Fig. 3 → flattening, Iso-C, Eq. 3 →
Iso-CTS, Sec. 4 and Fig. 1 → the other methods), each a title, a text whose numbers come from
the toy of ``analysis.toy`` at one shared state, and titled, captioned figures. The page shows
the steps; ``render_handout`` writes the same steps as one self-contained HTML file.

Every claim a text makes is computed, not asserted: a sentence that would be false at the
current state is replaced by the one that is true (e.g. where Task Arithmetic wins).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis import fig3a, figures, toy
from analysis.correlation import correlation
from analysis.sar import DEFAULT_RULE, K_RULES, rank_by_rule, sar
from analysis.style import TASK_PALETTE, method_color, style_figure
from merging.registry import get_method

EXPORT_SIZE = (1200, 675)  # px of every exported figure (16:9 slide)
SHARED_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class TourState:
    """Everything the tour's numbers depend on (the page keeps it in the URL)."""

    shared: float = toy.DEFAULT_SHARED
    weak: float = toy.DEFAULT_WEAK
    fraction: float = toy.DEFAULT_FRACTION
    rule: str = DEFAULT_RULE
    value: float = K_RULES[DEFAULT_RULE].default


@dataclass(frozen=True)
class TourFigure:
    key: str
    title: str
    caption: str
    figure: go.Figure


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    text: str  # markdown
    figures: list[TourFigure] = field(default_factory=list)
    link: tuple[str, str] | None = None  # (page, label) of the view that shows it on the zoo


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


def toy_results(state: TourState) -> ToyResults:
    zoo = toy.toy_zoo(state.shared, state.weak)
    params = {"iso_cts": {"common_fraction": state.fraction}}
    merges = {m: toy.merge(zoo, m, params.get(m)) for m in (*toy.TOUR_METHODS, *toy.OTHER_METHODS)}
    return ToyResults(state, zoo, toy.task_matrices(zoo), merges)


# -- figure helpers ---------------------------------------------------------------------------------

def _name(method: str) -> str:
    return get_method(method).display_name


def _titled(fig: go.Figure, title: str, height: int = 340) -> go.Figure:
    style_figure(fig, height=height)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", font_size=15), margin=dict(t=80))
    return fig


def per_task_bars(results: ToyResults, methods: tuple[str, ...], values: Callable[[str], list[float]],
                  title: str, y_title: str) -> go.Figure:
    """Side-by-side bars, one group per task, one colour per method, values printed on the bars."""
    fig = go.Figure([go.Bar(x=results.tasks, y=values(m), name=_name(m), marker_color=method_color(m),
                            text=[f"{v:.2f}" for v in values(m)], textposition="outside",
                            hovertemplate=f"{_name(m)}<br>%{{x}}: %{{y:.3f}}<extra></extra>") for m in methods])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title=y_title)
    return _titled(fig, title)


def spectrum_lines(curves: dict[str, tuple[torch.Tensor, str]], title: str, log: bool = False) -> go.Figure:
    """σ_i against i, one line per {name: (σ, colour)}."""
    fig = go.Figure([go.Scatter(x=list(range(1, len(s) + 1)), y=[float(v) for v in s], name=name,
                                mode="lines+markers", line=dict(color=color),
                                hovertemplate=f"{name}<br>σ_%{{x}} = %{{y:.3f}}<extra></extra>")
                     for name, (s, color) in curves.items()])
    fig.update_xaxes(title="index i (largest first)", dtick=1)
    fig.update_yaxes(title="singular value σ_i" + (" (log scale)" if log else ""), type="log" if log else "linear")
    return _titled(fig, title)


def heatmaps(mats: dict[str, torch.Tensor], title: str) -> go.Figure:
    """Side-by-side heatmaps on one colour scale (red positive, blue negative)."""
    fig = make_subplots(rows=1, cols=len(mats), subplot_titles=list(mats), horizontal_spacing=0.04)
    bound = max(float(m.abs().max()) for m in mats.values()) or 1.0
    for i, m in enumerate(mats.values(), start=1):
        fig.add_trace(go.Heatmap(z=m.tolist(), zmin=-bound, zmax=bound, colorscale="RdBu_r", showscale=i == len(mats),
                                 hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"), row=1, col=i)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    return _titled(fig, title, height=300)


def _task_colors(results: ToyResults) -> dict[str, str]:
    return {t: TASK_PALETTE[i] for i, t in enumerate(results.tasks)}


# -- the steps ---------------------------------------------------------------------------------------

def step_task_vectors(r: ToyResults) -> Step:
    colors = _task_colors(r)
    curves = {t: (toy.singular_values(d), colors[t]) for t, d in zip(r.tasks, r.deltas)}
    curves["TA sum"] = (toy.singular_values(sum(r.deltas)), method_color("task_arithmetic"))
    tau = r.deltas[0]
    text = (
        "Fine-tuning moves the weights from θ0 to θt. Their difference **τt = θt − θ0** is the *task vector*: "
        "everything the model learned for task t. Restricted to one 2-D weight it is a *task matrix* Δt. Task "
        "Arithmetic (TA) merges by adding them: θ = θ0 + α·Σt Δt, with one scaling α.\n\n"
        f"The toy: an {toy.SIZE}×{toy.SIZE} layer and {toy.TASKS} tasks. Each task matrix is a rank-{toy.SHARED_RANK} "
        f"part that every task shares plus a rank-{toy.OWN_RANK} part of its own, so it has **rank "
        f"{toy.TASK_RANK}** (and a faint full-rank part, as real fine-tuning has). The *shared* slider moves weight "
        f"between the two parts; the *weak task* slider shrinks task {toy.TASKS}'s whole update. Any matrix is a sum of "
        "rank-one pieces σi·ui viᵀ (its SVD); the singular values σ1 ≥ σ2 ≥ … say how much each direction carries.")
    return Step("task_vectors", "1 · Task vectors and their spectra", text, [
        TourFigure("tv", "A task vector is what fine-tuning changed",
                   f"θ0, θ1 and τ1 = θ1 − θ0 on one colour scale; ‖τ1‖F = {float(tau.norm()):.3f}.",
                   heatmaps({"θ0 (pretrained)": r.zoo.pretrained[toy.KEY], "θ1 (fine-tuned)": r.zoo.finetuned[0][toy.KEY],
                             "τ1 = θ1 − θ0": tau}, "θ0, θ1 and the task vector τ1")),
        TourFigure("spectrum", "Spectra of the task matrices and of their sum",
                   f"Each task has {toy.TASK_RANK} large σ (rank {toy.TASK_RANK}) and a faint tail; the TA sum has "
                   f"{toy.SIZE}. Shared directions add up in the sum's top σ; a weak task's directions stay small.",
                   spectrum_lines(curves, "Singular values of each Δt and of Σt Δt")),
    ], ("spectra", "Spectra of the real zoo, layer by layer"))


def _rule_text(state: TourState) -> str:
    if state.rule == "eq6":
        return (f"Eq. 6 with ε = {state.value:g}: k_M is the smallest k with ‖ΔM − Πk ΔM‖F ≤ ε‖ΔM‖F. ε bounds the "
                f"Frobenius *norm* left out, so the kept directions hold at least 1 − ε² = "
                f"{100 * (1 - state.value ** 2):.2f}% of the energy ‖ΔM‖F²")
    return (f"the authors' figure rule with threshold {state.value:g}: k_M counts the directions before the first "
            f"whose cumulative norm √(Σ_{{i≤k}} σi² / Σ σi²) exceeds {state.value:g} (Eq. 6 would call this "
            f"ε ≈ √(1 − {state.value:g}²) = {np.sqrt(1 - state.value ** 2):.2f})")


def step_alignment(r: ToyResults) -> Step:
    ta_sar, ta_nai = r.sar("task_arithmetic"), r.nai("task_arithmetic")
    weak = len(r.tasks) - 1
    lowest_sar, lowest_nai = int(np.argmin(ta_sar)), int(np.argmin(ta_nai))
    agree = ("The weak task has both the lowest SAR and the lowest NAI under TA: it is the task left behind."
             if lowest_sar == lowest_nai == weak else
             f"Here the lowest SAR is {r.tasks[lowest_sar]}'s and the lowest NAI {r.tasks[lowest_nai]}'s: "
             "alignment and accuracy need not agree task by task.")
    text = (
        "**NAI** (normalized accuracy improvement) = (acc(merged) − acc(θ0)) / (acc(fine-tuned) − acc(θ0)): 1 means "
        "the task lost nothing, 0 means no better than the pretrained model, and it is **negative** when the merge "
        "does worse than the pretrained model. The toy has no images, so its *accuracy* is how well the merged "
        "layer reproduces the fine-tuned layer's output directions on the task's own inputs (mean cosine); its "
        "toy NAI is the same ratio. α is tuned per method for the best mean toy NAI.\n\n"
        "The **Subspace Alignment Ratio** SAR(Δt, ΔM) = ‖Π_k Δt‖F / ‖Δt‖F measures how much of task t lies in the "
        "merged matrix's top-k_M left singular directions (Π_k projects onto them). k_M comes from the merge's own "
        f"spectrum, here by {_rule_text(r.state)}. The paper finds that tasks with higher SAR keep more accuracy. "
        f"Under TA (α = {r.merges['task_arithmetic'].alpha:g}, k_M = {r.k_m('task_arithmetic')} of {toy.SIZE}): "
        + ", ".join(f"{t} SAR {s:.2f} / NAI {n:.2f}" for t, s, n in zip(r.tasks, ta_sar, ta_nai)) + ". " + agree)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["SAR under Task Arithmetic", "toy NAI under Task Arithmetic"])
    colors = [TASK_PALETTE[i] for i in range(len(r.tasks))]
    for col, ys, label in ((1, ta_sar, "SAR"), (2, ta_nai, "toy NAI")):
        fig.add_trace(go.Bar(x=r.tasks, y=ys, marker_color=colors, showlegend=False, text=[f"{v:.2f}" for v in ys],
                             textposition="outside", hovertemplate=f"%{{x}}<br>{label} %{{y:.3f}}<extra></extra>"),
                      row=1, col=col)
    return Step("alignment", "2 · Alignment and accuracy (SAR and NAI)", text, [
        TourFigure("sar_nai", "Alignment and toy NAI per task under Task Arithmetic",
                   f"SAR with k_M by {'Eq. 6' if r.state.rule == 'eq6' else 'the figure rule'} ({r.state.value:g}); "
                   f"toy NAI at TA's tuned α = {r.merges['task_arithmetic'].alpha:g}.",
                   _titled(fig, "Does the task left out of the merge's subspace lose accuracy?")),
    ], ("alignment", "SAR heatmaps and the SAR–NAI correlation on the real zoo"))


def paper_nai_figure() -> go.Figure:
    """Fig. 3a's NAI per task for TA and Iso-C, from the published accuracies."""
    table = fig3a.paper_nai()
    fig = go.Figure()
    for m, part in table.groupby("method", sort=False):
        fig.add_trace(go.Bar(x=part["task"], y=part["nai"], name=_name(str(m)), marker_color=method_color(str(m)),
                             text=[f"{v:.2f}" for v in part["nai"]], textposition="outside",
                             hovertemplate=f"{_name(str(m))}<br>%{{x}}: NAI %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="NAI")
    return _titled(fig, "Fig. 3a (ViT-B/16, 8 tasks): NAI of Task Arithmetic and Iso-C, from published accuracies")


def zoo_points_figure(points: pd.DataFrame, stats: dict) -> go.Figure:
    """The zoo's SAR_avg–NAI points in Fig. 3a's layout (``analysis.figures.fig3a_scatter``)."""
    shown = points.assign(method=points["method"].map(_name))
    tasks = list(dict.fromkeys(points["task"]))
    fig = figures.fig3a_scatter(shown, stats, {t: TASK_PALETTE[i % len(TASK_PALETTE)] for i, t in enumerate(tasks)})
    return _titled(fig, f"The zoo: SAR_avg vs NAI, TA (★) and Iso-C (▲) · Pearson r = {stats['pearson']:.2f}, "
                        f"n = {stats['n']}", height=380)


def strength_words(r: float) -> str:
    """A plain-words reading of a correlation coefficient."""
    if not np.isfinite(r):
        return "undefined (too few points)"
    bands = ((0.7, "strong"), (0.5, "moderate"), (0.3, "weak"), (-0.3, "none to speak of"), (-1.01, "inverse"))
    return next(word for bound, word in bands if r >= bound)


def step_paper(r: ToyResults, zoo_points: pd.DataFrame | None = None, zoo_name: str = "this zoo") -> Step:
    paper = fig3a.paper_nai()
    ta, iso = (paper[paper["method"] == m].set_index("task")["nai"] for m in ("task_arithmetic", "iso_c"))
    text = (
        "Fig. 3a of the paper plots, for 8 tasks on ViT-B/16, each task's SAR_avg (SAR averaged over layers) "
        "against its NAI, for TA (★) and Iso-C (▲). The accuracies behind it are published in the authors' figure "
        f"script, so the NAI side can be recomputed from facts: TA's NAI runs from {ta.min():.2f} ({ta.idxmin()}, "
        f"below zero: worse than zero-shot) to {ta.max():.2f} ({ta.idxmax()}); Iso-C's from {iso.min():.2f} to "
        f"{iso.max():.2f}. Their SAR values are not published as numbers, so they are not drawn here.")
    figures = [TourFigure("paper", "The paper's NAI per task (Fig. 3a's y-axis)",
                          f"Source: {fig3a.SOURCE}. NAI = (acc − zero-shot) / (fine-tuned − zero-shot).",
                          paper_nai_figure())]
    if zoo_points is not None and len(zoo_points):
        stats = correlation(zoo_points["sar_avg"], zoo_points["nai"])
        text += (f"\n\nOn **{zoo_name}** (TA and Iso-C, α chosen as in the sidebar, figure rule 0.95) the {stats['n']}-point "
                 f"Pearson r is **{stats['pearson']:.2f}** (n = {stats['n']}, p = {stats['pearson_p']:.2g}): "
                 f"{strength_words(stats['pearson'])}. Read the paper's claim with that in mind.")
        figures.append(TourFigure("zoo_points", f"SAR_avg vs NAI on {zoo_name}, in Fig. 3a's layout",
                                  "One marker per method (★ TA, ▲ Iso-C), one colour per task; the Alignment view "
                                  "shows the same points with a fit line.", zoo_points_figure(zoo_points, stats)))
    else:
        text += "\n\nThe current zoo has no evaluation data, so its own points cannot be drawn."
    return Step("paper", "3 · Does alignment predict accuracy on real models?", text, figures,
                ("alignment", "Reproduce Fig. 3a on the current zoo"))


def step_flattening(r: ToyResults) -> Step:
    ta, iso = r.nai("task_arithmetic"), r.nai("iso_c")
    weak = len(r.tasks) - 1
    total = sum(r.deltas)
    ratio = toy.weak_directions(r.zoo)
    rescue = (f"Iso-C lifts the weak task from {ta[weak]:.2f} to {iso[weak]:.2f}"
              if iso[weak] > ta[weak] else f"Iso-C does not help the weak task here ({ta[weak]:.2f} → {iso[weak]:.2f})")
    mean = (f"; on average Iso-C scores {r.mean_nai('iso_c'):.2f} and TA {r.mean_nai('task_arithmetic'):.2f}, since "
            "flattening also weakens the strong tasks' dominant directions.")
    text = (
        "Iso-C keeps the *directions* of the TA sum S = Σt Δt = U Σ Vᵀ and replaces all its singular values by their "
        "mean: Δ = σ̄ U Vᵀ. The spectrum becomes *isotropic* (flat), so the weak directions of each task are no "
        f"longer drowned by the dominant shared ones. {rescue}{mean}\n\n"
        "**SAR after flattening.** k_M is read off the merge's *own* spectrum. A flat spectrum of r = 8 keeps all 8 "
        "directions under Eq. 6 for any ε < 0.354 (√(1/8)), so SAR = 1 for every task whatever the directions are: "
        "a tautology, not evidence. Under the figure rule at 0.95 a flat spectrum keeps 7 of 8. And which 7 is "
        "arbitrary, since all σ are equal: the app breaks such ties deterministically, ordering tied directions by "
        "how much of the TA sum they carry (which is what the authors' figure script does for Iso).\n\n"
        f"**Rank-deficient sums.** σ̄ averages all {toy.SIZE} singular values. Were the sum rank-deficient, "
        "Iso-C would raise directions that no task uses to σ̄ (the engine, like the authors' code, does so; real "
        "task matrices are full rank). The toy keeps a faint full-rank part in every task to stay clear of it; "
        f"here σ_min/σ_max of the sum is {ratio:.3f}"
        + (", nearly rank-deficient: watch the faint directions rise." if ratio < 0.01 else "."))
    curves = {"TA sum (before)": (toy.singular_values(total), method_color("task_arithmetic")),
              "Iso-C (after)": (toy.singular_values(r.merges["iso_c"].delta), method_color("iso_c"))}
    return Step("flattening", "4 · Flattening: Iso-C gives every direction the same weight", text, [
        TourFigure("flat", "Before and after flattening",
                   "σ of the TA sum and of Iso-C's update (α = 1): every Iso-C σ equals the sum's mean σ̄.",
                   spectrum_lines(curves, "Iso-C flattens the spectrum of the TA sum")),
        TourFigure("flat_nai", "Toy NAI per task: TA vs Iso-C",
                   f"α tuned per method: TA {r.merges['task_arithmetic'].alpha:g}, Iso-C {r.merges['iso_c'].alpha:g}.",
                   per_task_bars(r, ("task_arithmetic", "iso_c"), r.nai, "Does flattening rescue the weak task?",
                                 "toy NAI")),
        TourFigure("flat_sar", "SAR per task: TA vs Iso-C",
                   f"k_M: TA {r.k_m('task_arithmetic')}, Iso-C {r.k_m('iso_c')} of {toy.SIZE}; Iso-C's tied "
                   "directions ordered by the TA sum.",
                   per_task_bars(r, ("task_arithmetic", "iso_c"), r.sar, "Alignment with the merged subspace", "SAR")),
    ], ("spectra", "Before and after flattening on the real zoo"))


def stacked_figure(r: ToyResults) -> tuple[go.Figure, int, int]:
    """Iso-CTS's stacked σ before flattening, coloured by source; returns (figure, k, s)."""
    blocks = toy.iso_cts_blocks(r.deltas, r.state.fraction)
    k, s = len(blocks[0][1]), len(blocks[1][1]) if len(blocks) > 1 else 0
    fig, start = go.Figure(), 1
    colors = {"common": method_color("iso_cts"), **_task_colors(r)}
    for source, sigma in blocks:
        xs = list(range(start, start + len(sigma)))
        fig.add_trace(go.Bar(x=xs, y=[float(v) for v in sigma], name=source, marker_color=colors[source],
                             hovertemplate=f"{source}<br>slot %{{x}}: σ = %{{y:.3f}}<extra></extra>"))
        start += len(sigma)
    fig.add_hline(y=float(torch.cat([b[1] for b in blocks]).mean()), line_dash="dash", line_color="#868E96",
                  annotation_text="σ̄: every slot's σ after flattening")
    fig.update_xaxes(title="slot in the stacked basis", dtick=1)
    fig.update_yaxes(title="σ before flattening")
    return _titled(fig, f"Iso-CTS stacks k = {k} common + {toy.TASKS} × s = {s} task-specific directions"), k, s


def step_iso_cts(r: ToyResults) -> Step:
    fig, k, s = stacked_figure(r)
    cts, iso = r.mean_nai("iso_cts"), r.mean_nai("iso_c")
    weak = len(r.tasks) - 1
    verdict = (f"Here Iso-CTS's mean toy NAI is {cts:.2f} against Iso-C's {iso:.2f}, and the weak task gets "
               f"{r.nai('iso_cts')[weak]:.2f} (Iso-C {r.nai('iso_c')[weak]:.2f}, TA {r.nai('task_arithmetic')[weak]:.2f}).")
    text = (
        "Iso-C spends every slot on the sum's directions; the sum's tail directions are mixtures the tasks only "
        "partly use. Iso-CTS keeps the top-k directions of the sum (the *common subspace*) and fills the other "
        "r − k slots with each task's s strongest directions *outside* it (the residual Δt − Uk Ukᵀ Δt), then "
        f"flattens the lot. For r = {toy.SIZE} and T = {toy.TASKS}, k is r − T·round((r − ⌊r·f⌋)/T), so the common "
        f"fraction f gives only k ∈ {{2, 5, 8}}: now **k = {k}, s = {s}** (f = {r.state.fraction:g}). At k = 2 the "
        f"common block matches the rank-{toy.SHARED_RANK} shared part and s = 2 each task's own part. With f = 1 it "
        f"is Iso-C. {verdict}")
    return Step("iso_cts", "5 · Iso-C is not enough: common and task-specific subspaces (Iso-CTS)", text, [
        TourFigure("stacked", "Iso-CTS's stacked singular values, by source",
                   "The common block (top-k σ of the sum), then each task's top-s residual σ; flattening sets every "
                   "slot to the dashed σ̄.", fig),
        TourFigure("cts_nai", "Toy NAI per task: TA, Iso-C and Iso-CTS",
                   "α tuned per method: " + ", ".join(f"{_name(m)} {r.merges[m].alpha:g}" for m in toy.TOUR_METHODS)
                   + ".", per_task_bars(r, toy.TOUR_METHODS, r.nai, "Who is left behind?", "toy NAI")),
    ], ("common", "Accuracy as the common fraction moves, on the real zoo"))


def step_fig1(r: ToyResults) -> Step:
    curves = {f"{_name(m)} (α = {r.merges[m].alpha:g})":
              (toy.singular_values(r.merges[m].alpha * r.merges[m].delta), method_color(m)) for m in toy.TOUR_METHODS}
    text = ("The paper's Fig. 1 in one picture: the spectra of the three merges, each scaled by its tuned α, on one "
            "log axis. TA's steep spectrum gives a few shared directions most of the weight; Iso-C and Iso-CTS are "
            "flat at their own level σ̄·α, over different directions.")
    return Step("fig1", "6 · The three spectra together (as in the paper's Fig. 1)", text, [
        TourFigure("fig1", "Spectra of α·Δ for TA, Iso-C and Iso-CTS",
                   "Each update scaled by its tuned α; log scale.",
                   spectrum_lines(curves, "Singular values of the merged updates, scaled by α", log=True)),
    ], ("spectra", "The same picture on every layer of the real zoo"))


def shared_sweep(weak: float, fraction: float, methods: tuple[str, ...] = toy.TOUR_METHODS) -> pd.DataFrame:
    """Mean toy NAI (α tuned) per method as the shared part goes 0 → 1: shared, method, nai."""
    rows = []
    for shared in SHARED_SWEEP:
        zoo = toy.toy_zoo(shared, weak)
        for m in methods:
            params = {"common_fraction": fraction} if m == "iso_cts" else None
            rows.append({"shared": shared, "method": m, "nai": float(np.mean(toy.merge(zoo, m, params).nai))})
    return pd.DataFrame(rows)


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


def step_others(r: ToyResults) -> Step:
    sweep = shared_sweep(r.state.weak, r.state.fraction)
    wide = sweep.pivot(index="shared", columns="method", values="nai")
    ta_best = wide["task_arithmetic"] > wide[["iso_c", "iso_cts"]].max(axis=1)
    limit = (f"TA has the best mean toy NAI at shared = {_runs(ta_best)}. With nothing shared, the toy's tasks read "
             "disjoint inputs, so their updates do not interfere and adding them is exact; with much shared, the "
             "tasks agree, adding them is right, and flattening only distorts the common direction. Flattening "
             "pays in between, where a shared part drowns the weak task."
             if ta_best.any() else "At this weak-task scale TA never has the best mean toy NAI in the sweep.")
    means = ", ".join(f"{_name(m)} {r.mean_nai(m):.2f}" for m in (*toy.TOUR_METHODS, *toy.OTHER_METHODS))
    text = ("The other methods on the same toy, α tuned the same way. **TSV-M** keeps each task's top singular "
            "directions and orthogonalises them (it does not flatten). **CART** starts from the weight average and "
            "adds low-rank centred task vectors. **TIES** trims, elects signs and averages, entry by entry. Mean "
            f"toy NAI here: {means}.\n\n**Where TA wins.** {limit}")
    fig = go.Figure([go.Scatter(x=part["shared"], y=part["nai"], name=_name(str(m)), mode="lines+markers",
                                line=dict(color=method_color(str(m)), width=3),
                                hovertemplate=f"{_name(str(m))}<br>shared %{{x:g}}: mean NAI %{{y:.3f}}<extra></extra>")
                     for m, part in sweep.groupby("method", sort=False)])
    fig.add_vline(x=r.state.shared, line_dash="dot", line_color="#868E96", annotation_text="current")
    fig.update_xaxes(title="how much the tasks share")
    fig.update_yaxes(title="mean toy NAI (α tuned)")
    methods = (*toy.TOUR_METHODS, *toy.OTHER_METHODS)
    return Step("others", "7 · The other methods, and where Task Arithmetic wins", text, [
        TourFigure("others_nai", "Toy NAI per task for all six methods",
                   "α tuned per method: " + ", ".join(f"{_name(m)} {r.merges[m].alpha:g}" for m in methods) + ".",
                   per_task_bars(r, methods, r.nai, "Six merges of the same toy", "toy NAI")),
        TourFigure("sweep", "Mean toy NAI as the tasks share more",
                   f"Weak task at {r.state.weak:g}, Iso-CTS at f = {r.state.fraction:g}; every point re-tunes α.",
                   _titled(fig, "Flattening helps when tasks differ; TA wins when they agree")),
    ], ("merge", "Merge the real zoo with any method"))


def tour(state: TourState, zoo_points: pd.DataFrame | None = None, zoo_name: str = "this zoo") -> list[Step]:
    """Every step at ``state``; ``zoo_points`` (method, task, sar_avg, nai of TA and Iso-C) adds the zoo's."""
    r = toy_results(state)
    return [step_task_vectors(r), step_alignment(r), step_paper(r, zoo_points, zoo_name), step_flattening(r),
            step_iso_cts(r), step_fig1(r), step_others(r)]


def export_config(name: str, fmt: str = "svg") -> dict:
    """plotly.js config: the modebar's camera button saves a fixed-size ``fmt`` image named ``name``."""
    width, height = EXPORT_SIZE
    return {"toImageButtonOptions": {"format": fmt, "filename": name, "width": width, "height": height, "scale": 1},
            "displaylogo": False}


def render_handout(steps: list[Step], state: TourState, title: str = "Isoscope · Learn tour") -> str:
    """One self-contained HTML page (plotly.js inlined once): every step's text, figures and captions."""
    import re

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
    settings = (f"shared = {state.shared:g}, weak task = {state.weak:g}, Iso-CTS fraction = {state.fraction:g}, "
                f"k_M rule = {state.rule} ({state.value:g})")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;font-size:17px;line-height:1.5}"
            "figcaption{color:#555;font-size:15px}section{margin-bottom:48px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Toy settings: {html.escape(settings)}.</p>{''.join(parts)}</body></html>")
