"""Spectra view: singular values per matrix layer of the task matrices, their Task Arithmetic sum
and the merged updates (Iso-C and Iso-CTS flatten; TSV-M and CART do not)."""

from __future__ import annotations

import streamlit as st

from analysis import figures
from analysis.style import palette, recolor
from merging.registry import all_methods
from ui import data
from ui.core import timed
from ui.models import current_zoo, decompositions
from ui.page import header, link
from ui.state import alpha_choice, key, params_for, selection

registry = all_methods()
methods = [n for n, m in registry.items() if m.spectral]  # the methods that reshape a spectrum
header(":material/show_chart: Spectra",
       "Singular values of one layer's matrices, largest first, on a log scale. Thin coloured lines: the task "
       "matrices Δt; dashed black: their Task Arithmetic sum (before flattening); thick: the merged matrices of "
       "Iso-C and Iso-CTS (flattened: every σ equal), TSV-M and CART (not flattened). A steep curve means a few directions dominate, so tasks whose "
       "directions are weak get drowned; a flat curve gives every direction the same weight. The second chart "
       "shows cumulative energy (share of ‖Δ‖F² in the top i directions; Eq. 6's ε bounds the <i>norm</i> left "
       "out, so ε = 0.05 means 99.75% energy, not 95%). The common-fraction slider moves k, "
       "the dotted line: the sum's top k directions are Iso-CTS's common subspace. The other r − k slots go to "
       "each task's own top s directions outside it, which are <i>not</i> the sum's tail drawn right of the line "
       "(the Learn tour plots them, block by block).")

zoo = current_zoo()
dec = decompositions()
colors = palette(zoo.tasks)
labels = dec.labels

c1, c2, c3 = st.columns([2, 3, 1])
layout = c1.radio("Show", ["One layer", "All layers"], horizontal=True, key=key("spectra_layout"),
                  help="All layers: small multiples, one chart per matrix layer.")
shown = c2.multiselect("Merged methods", methods, default=methods, key=key("spectra_methods"),
                       format_func=lambda m: registry[m].display_name)
log_scale = c3.toggle("Log scale", value=True, key=key("spectra_log"))


def method_params(fraction: float) -> tuple[tuple[str, tuple], ...]:
    """Each shown method with its parameters; Iso-CTS takes the slider's fraction."""
    return tuple((m, tuple(sorted({**dict(params_for(m)), **({"common_fraction": fraction} if m == "iso_cts" else {})}.items())))
                 for m in shown)


@st.fragment
def spectrum_view() -> None:
    with timed("spectra"):
        _spectrum_view()


def _spectrum_view() -> None:
    default = float(dict(params_for("iso_cts")).get("common_fraction", 0.8))
    fraction = st.slider("Common fraction of Iso-CTS", 0.0, 1.0, default, 0.05, key=key("spectra_fraction"),
                         help="Share of each layer's rank r given to the common subspace (the rest is split "
                              "equally among the tasks). 1.0 is Iso-C. k moves in steps of T; the caption "
                              "below gives k and s.")
    alpha = alpha_choice()
    methods = method_params(fraction)
    if layout == "All layers":
        keys = tuple(dec.keys)
        data.prepare(dec, methods, keys, "Spectra of every layer", alpha=alpha)
        table = data.spectra(zoo.fingerprint, dec, methods, keys, alpha)
        fig = figures.small_multiples(table, log=log_scale)
        st.plotly_chart(recolor(fig, colors), key=key("spectra_fig_all"))
        return
    first_attn = next((i for i, k in enumerate(dec.keys) if "attn" in k), 0)
    layer_key = st.selectbox("Layer", dec.keys, index=first_attn, format_func=lambda k: f"{labels[k]}  {dec.shape(k)}",
                             key=key("spectra_layer"))
    data.prepare(dec, methods, (layer_key,), f"Spectra of {labels[layer_key]}", alpha=alpha)
    table = data.spectra(zoo.fingerprint, dec, methods, (layer_key,), alpha)
    bound = data.boundary(zoo.fingerprint, dec, fraction, (layer_key,)).set_index("key").loc[layer_key]
    span = [0.5, int(bound["r"]) + 0.5]  # keep the boundary label from widening the axis
    fig = figures.spectrum_figure(table, labels[layer_key], bound.to_dict())
    fig.update_yaxes(type="log" if log_scale else "linear")
    energy = figures.energy_figure(table, labels[layer_key], bound.to_dict()).update_layout(showlegend=False)
    for shown_fig in (fig, energy):  # boundary label left of its line, clear of the legend
        shown_fig.update_xaxes(range=span).update_annotations(xanchor="right", font_size=11)
    left, right = st.columns([3, 2])
    left.plotly_chart(recolor(fig, colors), key=key("spectra_fig"))
    right.plotly_chart(recolor(energy, colors), key=key("spectra_fig_energy"))
    r, k, s = int(bound["r"]), int(bound["k"]), int(bound["s"])
    st.caption(f"{labels[layer_key]}: rank r = {r}; Iso-CTS keeps k = {k} common directions and s = {s} per task "
               f"({len(zoo.tasks)} tasks × {s} = {len(zoo.tasks) * s}).")


spectrum_view()
link("alignment", "Next: how well each task is aligned with the merged subspace")
