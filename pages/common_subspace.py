"""Common-subspace view: Iso-CTS accuracy against ``common_fraction`` and CART against
``rank_ratio`` (Marczak et al., ICML 2025, Fig. 5; Choi et al., CART, Fig. 3)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import figures
from analysis.style import palette, recolor
from merging.registry import all_methods
from ui.core import errors_in_place, progress_bar
from ui.models import current_evaluator, current_zoo, require_data
from ui.page import header, link
from ui.sampling import budget_caption, table_columns
from ui.state import alpha_choice, key, params_for, selection

header(":material/tune: Common subspace",
       "Accuracy as the size of the shared subspace moves. Left: Iso-CTS against its <b>common fraction</b> "
       "(1 is Iso-C; smaller values leave more of each layer's rank to task-specific directions). Right: CART "
       "against its <b>rank ratio</b> ρ (the rank kept for each centred task vector). Thin lines are tasks, the "
       "thick line their average; the ringed point is the value under the slider, and the table below gives its "
       "numbers per task. α is chosen on validation at every point, or fixed in the sidebar. Each sweep is computed "
       "once with a progress bar, stored on disk, and comes back instantly on the next visit.")

zoo = current_zoo()
require_data(zoo, "Accuracy against the subspace size")
ev = current_evaluator()
registry = all_methods()
SWEEPS = {n: m.swept() for n, m in registry.items() if m.swept()}  # method: its swept Param
colors = palette(zoo.tasks)
alpha = alpha_choice()
alpha_text = "α chosen on validation at every point" if alpha is None else f"α = {alpha:g}"


def sweep(method: str) -> pd.DataFrame:
    """The stored sweep of ``method`` (computed with a progress bar the first time)."""
    from analysis.sweeps import param_sweep

    param, values = SWEEPS[method].name, SWEEPS[method].sweep
    memo = st.session_state.setdefault(key("sweeps"), {})
    memo_key = (zoo.fingerprint, zoo.max_images, method, params_for(method), alpha)  # a budget scores apart
    if memo_key not in memo:
        with progress_bar(f"{registry[method].display_name} sweep over {param} ({alpha_text})") as report:
            with errors_in_place():
                others = {k: v for k, v in params_for(method) if k != param}
                memo[memo_key] = param_sweep(ev, method, param, values, others, alpha, report)
    return memo[memo_key]


def panel(method: str) -> None:
    param, name = SWEEPS[method], registry[method].display_name
    table = sweep(method)
    default = dict(params_for(method)).get(param.name, param.default)
    current = min(param.sweep, key=lambda v: abs(v - default))
    value = st.select_slider(f"{(param.label or param.name).capitalize()} ({name})", param.sweep, value=current,
                             key=key(f"common_{method}"))
    fig = figures.sweep_curve(table, name, param.label or param.name, value)
    st.plotly_chart(recolor(fig, colors), key=key(f"common_fig_{method}"))
    here = table[(table["split"] == "test") & ((table["value"] - value).abs() < 1e-9)]
    shown, se_config = table_columns(here, ["task", "accuracy", "normalized", "nai", "alpha"])
    st.dataframe(here[shown], hide_index=True, key=key(f"common_tab_{method}"),
                 column_config={"accuracy": st.column_config.NumberColumn("test accuracy", format="percent"),
                                "normalized": st.column_config.NumberColumn("normalized", format="percent"),
                                "nai": st.column_config.NumberColumn("NAI", format="%.3f"),
                                "alpha": st.column_config.NumberColumn("α", format="%.1f")} | se_config)
    budget_caption(zoo.max_images, here)


columns = st.columns(len(SWEEPS) or 1)
for column, method in zip(columns, SWEEPS):
    with column:
        st.fragment(panel)(method)
st.caption(f"{alpha_text}. Sweeps are stored in the result store under the cache folder: rerunning one evaluates "
           "only the points not stored yet.")
link("merge", "Next: merge with your chosen settings and export")
