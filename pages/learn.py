"""Learn: a guided tour of spectral merging in the paper's order, on one live toy (three tasks
fine-tuning one 8×8 layer, ``analysis.toy``) whose every number comes from the real engine.
The content is ``analysis.tour``; this page draws it, keeps the toy's state in the URL (so a
lecturer can prepare links such as ``?step=3&shared=0.3&weak=0.3``), offers a presenter mode
(one step per screen) and exports the figures and a self-contained HTML handout."""

from __future__ import annotations

import math
from dataclasses import asdict

import pandas as pd
import streamlit as st

from analysis import tour
from analysis.sar import DEFAULT_RULE, K_RULES
from ui.core import errors_in_place
from ui.page import header, link
from ui.points import zoo_points
from ui.state import key

STEPS = 7
# URL parameter → (session key, default, parser, allowed range); the widgets' values live under these keys.
PARAMS = {
    "shared": (key("learn_shared"), tour.TourState.shared, float, (0.0, 1.0)),
    "weak": (key("learn_weak"), tour.TourState.weak, float, (0.1, 1.0)),
    "fraction": (key("learn_fraction"), tour.TourState.fraction, float, (0.0, 1.0)),
    "rule": (key("learn_rule"), tour.TourState.rule, str, None),
    "k": (key("learn_value"), tour.TourState.value, float, (0.01, 0.99)),
    "step": (key("learn_step"), 1, int, (1, STEPS)),
    "present": (key("learn_present"), False, lambda v: v in ("1", "true", "True"), None),
}
PRESENTER_CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stSidebarNav"] {display: none;}
.stMainBlockContainer {max-width: 1200px;}
.stMarkdown p, .stMarkdown li, .iso-lead {font-size: 1.35rem !important; line-height: 1.55;}
h2, h3 {font-size: 2.1rem !important;}
</style>"""


def from_url() -> None:
    """Fill every value the session lacks from the URL (first visit, or a prepared link), else
    its default; afterwards the widgets own the values. Bad values fall back to the default."""
    for name, (skey, default, parse, bounds) in PARAMS.items():
        if skey in st.session_state:
            continue
        raw = st.query_params.get(name)
        try:
            value = parse(raw) if raw is not None else default
        except ValueError:
            value = default
        if isinstance(value, float) and not math.isfinite(value):
            value = default
        st.session_state[skey] = min(max(value, bounds[0]), bounds[1]) if bounds else value
    if st.session_state[key("learn_rule")] not in K_RULES:
        st.session_state[key("learn_rule")] = tour.TourState.rule


def to_url() -> None:
    """Write the current state into the URL, so the address bar is a link to this very screen."""
    for name, (skey, default, _, _) in PARAMS.items():
        value = st.session_state.get(skey, default)
        st.query_params[name] = ("1" if value else "0") if isinstance(value, bool) else f"{value:g}" \
            if isinstance(value, float) else str(value)


def reset() -> None:
    for skey, default, _, _ in PARAMS.values():
        if skey != key("learn_present"):
            st.session_state[skey] = default


def move(delta: int) -> None:
    st.session_state[key("learn_step")] = min(max(st.session_state[key("learn_step")] + delta, 1), STEPS)


def controls() -> tour.TourState:
    """The toy's state, shared by every step."""
    c1, c2, c3, c4 = st.columns([3, 3, 3, 4])
    shared = c1.slider("How much the tasks share", 0.0, 1.0, step=0.05, key=key("learn_shared"),
                       help="0: each task has only its own directions; 1: all tasks use the same ones.")
    weak = c2.slider("Weak task's strength", 0.1, 1.0, step=0.05, key=key("learn_weak"),
                     help="Scales task 3's whole update; 1 makes it as strong as the others.")
    fraction = c3.slider("Iso-CTS common fraction f", 0.0, 1.0, step=0.05, key=key("learn_fraction"),
                         help="Share of the rank r = 8 given to the common subspace; on the toy k is 2, 5 or 8.")
    with c4:
        rule = st.radio("k_M rule for SAR", list(K_RULES), horizontal=True, key=key("learn_rule"),
                        format_func=lambda r: K_RULES[r].label,
                        on_change=lambda: st.session_state.update({key("learn_value"): K_RULES[
                            st.session_state[key("learn_rule")]].default}),
                        help="Figure script (reproduces Fig. 3a): keep the directions before the cumulative norm "
                             "√(Σσi²/Σσ²) passes the threshold. Eq. 6: the fewest directions whose left-out "
                             "Frobenius norm is at most ε·‖ΔM‖F (so 1 − ε² of the energy is kept).")
        label = K_RULES[rule].value_label
        value = st.slider(label, 0.01, 0.99, step=0.01, key=key("learn_value"))
    return tour.TourState(shared=shared, weak=weak, fraction=fraction, rule=rule, value=value)


def show_step(step: tour.Step, large: bool = False) -> None:
    """One step: title, text, each figure with its caption (built fresh each run, so the presenter's
    larger chart type may be set on it) and the link to the view that shows it on the zoo."""
    st.subheader(step.title)
    st.markdown(step.text)
    for fig in step.figures:
        if large:
            fig.figure.update_layout(font_size=17, title_font_size=24, height=(fig.figure.layout.height or 340) + 120)
        st.plotly_chart(fig.figure, key=key(f"learn_fig_{fig.key}"), config=tour.export_config(f"isoscope-{fig.key}"))
        st.caption(f"**{fig.title}.** {fig.caption}")
    if step.link:
        link(*step.link)


def points() -> pd.DataFrame | None:
    with errors_in_place(stop=False):
        return zoo_points(("task_arithmetic", "iso_c"), DEFAULT_RULE, K_RULES[DEFAULT_RULE].default)
    return None


from_url()
present = st.session_state[key("learn_present")]
if present:
    st.markdown(PRESENTER_CSS, unsafe_allow_html=True)
else:
    header(":material/school: Learn: spectral merging in seven steps",
           "A guided tour for a first encounter (or a lecture), in the order of the paper. Every step runs the real "
           "engine on one toy: a pretrained 8×8 <i>layer</i> θ0 and three copies fine-tuned on three <i>tasks</i>, "
           "the third a weak one. The sliders below set the toy for the whole tour; the text quotes its numbers. "
           "Presenter mode shows one step per screen, and the address bar always links to what you see.")

top = st.columns([2, 1.4, 2.6, 6])
top[0].toggle("Presenter", key=key("learn_present"), help="One step per screen, large type, no sidebar.")
top[1].button("Reset", key=key("learn_reset"), on_click=reset, icon=":material/restart_alt:",
              help="Back to the default toy and step 1.")
with st.expander("Toy settings", expanded=False) if present else st.container():
    state = controls()
to_url()
step_no = st.session_state[key("learn_step")]
with errors_in_place():
    zoo_pts = points() if (not present or step_no == 3) else None
    steps = tour.tour(state, zoo_pts, "the current zoo")
top[2].download_button("Export tour (.html)", data=lambda: tour.render_handout(steps, state).encode(),
                       file_name="isoscope-tour.html", mime="text/html", key=key("learn_handout"),
                       icon=":material/download:", help="One self-contained HTML page: every step, figure and caption.")
top[3].caption("Each figure's camera button (top right of the chart) saves a fixed-size "
               f"{tour.EXPORT_SIZE[0]}×{tour.EXPORT_SIZE[1]} SVG for slides. Settings: "
               + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in asdict(state).items()))

if present:
    show_step(steps[step_no - 1], large=True)
    prev, where, nxt = st.columns([1, 4, 1])
    prev.button("◀ Previous", key=key("learn_prev"), on_click=move, args=(-1,), disabled=step_no == 1,
                width="stretch")
    where.progress(step_no / STEPS, text=f"Step {step_no} of {STEPS}")
    nxt.button("Next ▶", key=key("learn_next"), on_click=move, args=(1,), disabled=step_no == STEPS, width="stretch")
else:
    for step in steps:
        show_step(step)
        st.divider()
