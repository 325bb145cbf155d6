"""Alignment view: Subspace Alignment Ratio per task × layer, SAR_avg per method, and the
SAR_avg-vs-NAI correlation (Marczak et al., ICML 2025, Eq. 5–6 and Fig. 3)."""

from __future__ import annotations

import streamlit as st

from analysis import figures
from analysis.correlation import POINT_SETS, sar_nai_correlation, set_methods
from analysis.k_rules import K_RULES
from analysis.style import palette, recolor, task_colors
from merging.registry import all_methods
from ui import data
from ui.core import errors_in_place, timed
from ui.models import current_evaluator, current_zoo
from ui.page import header, link
from ui.points import sar_averages, zoo_points
from ui.state import alpha_choice, k_rule_choice, key, method_choice, params_for, selection

header(":material/explore: Alignment",
       "How much of each task survives the merge, measured by the <b>Subspace Alignment Ratio</b> (SAR): the share "
       "of a task matrix's norm that lies in the span of the merged matrix's top k_M left singular directions. "
       "k_M is read off the merge's own spectrum by one of two rules (below): the paper's Eq. 6, where ε bounds "
       "the Frobenius <i>norm</i> left out (ε = 0.05 keeps 99.75% of the energy, not 95%), or the rule of the "
       "authors' figure script, which reproduces Fig. 3a. The heatmap shows SAR for every task (rows) and layer (columns) for the method "
       "chosen in the sidebar: bright is well aligned, dark means the merge dropped that task's directions. The "
       "bars compare SAR averaged over layers (SAR_avg) across the methods of the set chosen at the top, by "
       "default Fig. 3a's Task Arithmetic and Iso-C, plus the sidebar's method; choose a larger set there to add "
       "methods (each one merges every layer once on its first visit). The scatter tests the paper's claim that "
       "tasks with higher alignment keep more of their accuracy: NAI against SAR_avg, with a least-squares line "
       "and Pearson's r, over the same set (the report pools the same sets). NAI can be negative: a merge can "
       "score below the pretrained model on a task.")

SET_HELP = ("The methods the SAR_avg bars and the SAR–NAI scatter compare. **Fig. 3a** (default): Task Arithmetic "
            "and Iso-C, the paper's comparison; **six methods** adds TIES, TSV-M, Iso-CTS and CART; **all registered "
            "methods** adds weight averaging and any method registered later. The bars always include the sidebar's "
            "method (the heatmap's). Each added method merges every layer once on its first visit (the results are "
            "stored, so later visits are instant). The report pools the same sets: python -m analysis report "
            "--points fig3a|six|all.")

zoo = current_zoo()
ev = current_evaluator()
dec = ev.decompositions
registry = all_methods()
sel = selection()
colors = palette(zoo.tasks)
method = method_choice(list(registry))



def scatter(chosen: list[str], rule: str, value: float) -> None:
    """NAI against SAR_avg over the ``chosen`` methods (the set at the top of the page)."""
    st.subheader("Does alignment predict accuracy?")
    if not zoo.has_data:
        st.warning("The SAR–NAI scatter needs accuracies, and this zoo has no evaluation data: give a data folder "
                   "in the sidebar. The heatmap and bars above need only the weights.", icon=":material/folder_open:")
        return
    fig3a = st.toggle("Fig. 3a layout", key=key("align_fig3a"),
                      help="As the paper's Fig. 3a: one marker per method (★ TA, ▲ Iso-C, ● others), one colour "
                           "per task, no fit line.")
    with errors_in_place(stop=False):
        points = zoo_points(chosen, rule, value)
        if points is None:
            return
        stats = sar_nai_correlation(points)
        shown = points.assign(method=points["method"].map(lambda m: registry[m].display_name))
        fig = (figures.fig3a_scatter(shown, stats, task_colors(zoo.tasks)) if fig3a
               else recolor(figures.sar_nai_scatter(shown, stats), colors))
        st.plotly_chart(fig, key=key("align_scatter"))
        how = "chosen on validation" if alpha_choice() is None else f"= {sel.alpha:g}"
        names = ", ".join(registry[m].display_name for m in dict.fromkeys(points["method"]))
        st.caption(f"{len(points)} points: {names} × {len(zoo.tasks)} tasks (the set at the top); α {how}; k_M by "
                   f"{K_RULES[rule].label} ({value:g}). NAI = (merged − zero-shot) / "
                   "(fine-tuned − zero-shot): 1 means the task lost nothing, 0 no better than the pretrained model, "
                   "negative worse than it.")


@st.fragment
def alignment_view() -> None:
    with timed("alignment"):
        _alignment_view()


def _alignment_view() -> None:
    label = st.radio("Methods compared (bars and scatter)", list(POINT_SETS), key=key("align_points"),
                     horizontal=True, help=SET_HELP)
    chosen = [m for m in set_methods(label) if m in registry]
    compared = list(dict.fromkeys([*chosen, method]))  # the bars: the set, and the heatmap's method
    rule, eps = k_rule_choice("align", *st.columns([2, 3]))
    alpha = alpha_choice()
    with errors_in_place():
        methods = tuple((m, params_for(m)) for m in dict.fromkeys([method, *compared]))
        data.prepare(dec, methods, tuple(dec.keys), "Subspace alignment, layer by layer", spectra=False, alpha=alpha)
        table = data.sar_table(zoo.fingerprint, dec, method, params_for(method), eps, rule, alpha)
    st.plotly_chart(figures.sar_heatmap(table.assign(method=registry[method].display_name)), key=key("align_heatmap"))
    st.caption("k_M per layer (of r): " + ", ".join(
        f"{row.layer} {row.k_m}/{row.r}" for row in table.drop_duplicates("layer").itertuples()))
    averages = sar_averages(compared, rule, eps)
    averages["method"] = averages["method"].map(lambda m: registry[m].display_name)
    st.plotly_chart(recolor(figures.sar_avg_bars(averages), colors), key=key("align_bars"))
    extra = "" if method in chosen else f", plus the sidebar's {registry[method].display_name}"
    st.caption(f"SAR_avg of {', '.join(registry[m].display_name for m in compared)}: the set at the top{extra}. "
               "Choose a larger set there to compare more methods.")
    scatter(chosen, rule, eps)


alignment_view()
link("common", "Next: accuracy as the common subspace grows")
