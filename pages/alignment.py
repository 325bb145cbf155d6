"""Alignment view: Subspace Alignment Ratio per task × layer, SAR_avg per method, and the
SAR_avg-vs-NAI correlation (Marczak et al., ICML 2025, Eq. 5–6 and Fig. 3)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import figures
from analysis.style import palette, recolor
from merging.registry import all_methods
from ui import data
from ui.core import errors_in_place, progress_bar, timed
from ui.models import current_evaluator, current_zoo
from ui.page import header, link
from ui.state import alpha_choice, key, params_for, selection

header(":material/explore: Alignment",
       "How much of each task survives the merge, measured by the <b>Subspace Alignment Ratio</b> (SAR): the share "
       "of a task matrix's norm that lies in the span of the merged matrix's dominant directions, those that hold "
       "all but ε of its energy. The heatmap shows SAR for every task (rows) and layer (columns) for the method "
       "chosen in the sidebar: bright is well aligned, dark means the merge dropped that task's directions. The "
       "bars compare SAR averaged over layers (SAR_avg) across methods. The scatter tests the paper's claim that "
       "tasks with higher alignment keep more of their accuracy: NAI against SAR_avg, with a least-squares line "
       "and Pearson's r.")

zoo = current_zoo()
ev = current_evaluator()
dec = ev.decompositions
registry = all_methods()
sel = selection()
colors = palette(zoo.tasks)
method = sel.method if sel.method in registry else next(iter(registry))
compared = list(registry)  # every registered method, as in the report


def sar_tables(eps: float) -> dict[str, pd.DataFrame]:
    """SAR per task × layer of every compared method, computed layer by layer under one progress bar."""
    alpha = alpha_choice()
    methods = tuple((m, params_for(m)) for m in dict.fromkeys([method, *compared]))
    data.prepare(dec, methods, tuple(dec.keys), "Subspace alignment, layer by layer", spectra=False, alpha=alpha)
    return {m: data.sar_table(zoo.fingerprint, dec, m, p, eps, alpha) for m, p in methods}


def sar_avg(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    from analysis.sar import sar_average

    return sar_average(pd.concat([tables[m] for m in compared], ignore_index=True))


def nai_points() -> pd.DataFrame | None:
    """NAI per method × task at the sidebar's α (evaluations come from the result store when stored)."""
    if not zoo.has_data:
        return None
    rows = []
    with progress_bar("Evaluating the merged models for the scatter") as report, errors_in_place(stop=False):
        for i, m in enumerate(compared):
            report(i / len(compared), registry[m].display_name)
            table, _ = ev.table(m, dict(params_for(m)), alpha_choice())
            test = table[table["split"] == "test"]
            rows += [{"method": registry[m].display_name, "task": t, "nai": v} for t, v in zip(test["task"], test["nai"])]
        return pd.DataFrame(rows)
    return None


def scatter(averages: pd.DataFrame, nai: pd.DataFrame | None) -> None:
    from analysis.correlation import sar_nai_correlation

    st.subheader("Does alignment predict accuracy?")
    if nai is None:
        st.warning("The SAR–NAI scatter needs accuracies, and this zoo has no evaluation data: give a data folder "
                   "in the sidebar. The heatmap and bars above need only the weights.", icon=":material/folder_open:")
        return
    points = averages.merge(nai, on=["method", "task"])
    stats = sar_nai_correlation(points)
    st.plotly_chart(recolor(figures.sar_nai_scatter(points, stats), colors), key=key("align_scatter"))
    how = "chosen on validation" if alpha_choice() is None else f"= {sel.alpha:g}"
    st.caption(f"One point per method × task; α {how}. NAI = (merged − zero-shot) / (fine-tuned − zero-shot): "
               "1 means the task lost nothing, 0 means no better than the pretrained model.")


@st.fragment
def alignment_view(nai: pd.DataFrame | None) -> None:
    with timed("alignment"):
        _alignment_view(nai)


def _alignment_view(nai: pd.DataFrame | None) -> None:
    eps = st.slider("ε: energy of the merged matrix left out of its subspace", 0.01, 0.5, 0.05, 0.01,
                    key=key("align_eps"), help="k_M is the smallest rank holding all but ε of ‖ΔM‖F² "
                                               "(paper default 0.05). Larger ε: smaller subspace, lower SAR.")
    with errors_in_place():
        tables = sar_tables(eps)
    table = tables[method]
    st.plotly_chart(figures.sar_heatmap(table.assign(method=registry[method].display_name)), key=key("align_heatmap"))
    st.caption("k_M per layer (of r): " + ", ".join(
        f"{row.layer} {row.k_m}/{row.r}" for row in table.drop_duplicates("layer").itertuples()))
    averages = sar_avg(tables)
    averages["method"] = averages["method"].map(lambda m: registry[m].display_name)
    st.plotly_chart(recolor(figures.sar_avg_bars(averages), colors), key=key("align_bars"))
    scatter(averages, nai)


alignment_view(nai_points())
link("common", "Next: accuracy as the common subspace grows")
