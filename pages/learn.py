"""Learn: a guided tour of spectral merging in the paper's order. The geometry runs live on a toy
(three tasks fine-tuning one 8×8 layer, ``analysis.toy``); what the toy is too small to show comes
from real merges of the embedded zoo (``analysis.tour_zoo``, cached and kept in the result store).
The content is ``analysis.tour``; this page draws it, keeps the state in the URL (so a lecturer
can prepare links such as ``?step=3&shared=0.3&weak=0.3&present=1``), offers a presenter mode
(one step per 1920×1080 screen, large type, arrow keys) and exports SVGs and an HTML handout."""

from __future__ import annotations

import math
from dataclasses import astuple

import streamlit as st

from analysis import tour
from analysis.sar import K_RULES
from analysis.tour_zoo import ZooEvidence, zoo_evidence
from ui.core import cached, errors_in_place, progress_bar, quiet_run
from ui.models import current_evaluator, current_zoo
from ui.page import header, inside_app, link
from ui.state import Selection, default_zoo_spec, key, selection

inside_app()
STEPS = len(tour.STEP_KEYS)
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
PRESENTER_HEIGHT = 600  # px per chart: title, text, one row of charts and the buttons fit 1920×1080
PRESENTER_CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stSidebarNav"],
[data-testid="stExpandSidebarButton"] {display: none;}
.block-container, [data-testid="stMainBlockContainer"] {max-width: 1880px !important; padding: 3.2rem 2rem 0.5rem 2rem !important;}
.stMarkdown p, .stMarkdown li {font-size: 1.55rem !important; line-height: 1.45;}
h3 {font-size: 2.4rem !important; padding: 0 0 0.3rem 0 !important;}
iframe[title="st.iframe"], [data-testid="stIFrame"] {display: block;}
</style>"""
# Arrow keys (and a presenter remote's PageUp/PageDown) press Previous / Next, unless a widget has
# the focus; installed once into the page itself (the component's own frame is replaced on every
# step). Every step's script also scrolls the page back to the top.
NAV_SCRIPT = """<script>
const doc = window.parent.document;
if (!doc.defaultView.isoLearnKeys) {
  const s = doc.createElement("script");
  s.textContent = `window.isoLearnKeys = true;
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.altKey || e.ctrlKey || e.metaKey || (t && t.closest && t.closest("input, textarea, select, [role=slider]"))) return;
  const label = {ArrowRight: "Next ▶", PageDown: "Next ▶", ArrowLeft: "◀ Previous", PageUp: "◀ Previous"}[e.key];
  const button = label && [...document.querySelectorAll("button")].find((b) => b.innerText.trim() === label);
  if (button && !button.disabled) { e.preventDefault(); button.click(); }
});`;
  doc.head.appendChild(s);
}
for (const el of [doc.scrollingElement, ...doc.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"], section.main')]) {
  if (el) el.scrollTop = 0;
}
doc.defaultView.scrollTo(0, 0);
</script><!-- step %d -->"""


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


def embedded() -> Selection:
    """The embedded zoo (whatever the sidebar has open): the tour quotes its numbers."""
    return Selection(zoo_spec=default_zoo_spec(), device=selection().device)


def evidence(state: tour.TourState) -> ZooEvidence | None:
    """The embedded zoo's numbers at the state's k_M rule, Fig. 5's sweep included (real merges,
    built once per process with a progress bar, then served from memory; the accuracies also stay
    in the result store). Every step and the handout quote the same numbers."""
    sel = embedded()
    zoo = current_zoo(sel)
    if not zoo.has_data:
        return None

    def build() -> ZooEvidence:
        with progress_bar(f"Merging the {sel.zoo_spec} zoo for the tour (first visit only)") as report:
            return zoo_evidence(current_evaluator(sel), sel.zoo_spec, state.rule, state.value, report, curve=True)

    return cached("tour_zoo", (zoo.fingerprint, state.rule, state.value), build)


@st.cache_data(max_entries=256, show_spinner=False)
def built_step(step_key: str, state: tuple, zoo_key: tuple, _zoo: ZooEvidence | None) -> tour.Step:
    """One step (each session gets its own copy, so the presenter may restyle its figures)."""
    return tour.build_step(step_key, tour.TourState(*state), _zoo)


def show_step(step: tour.Step, present: bool = False) -> None:
    """One step: title, text and figures; the page adds the details, captions and the link, the
    presenter one row of large charts."""
    st.subheader(step.title)
    st.markdown(step.lead if present else step.text)
    columns = st.columns(len(step.figures)) if present else [st.container() for _ in step.figures]
    for col, fig in zip(columns, step.figures):
        with col:
            if present:
                tour.presenter_style(fig.figure, PRESENTER_HEIGHT)
            st.plotly_chart(fig.figure, key=key(f"learn_fig_{fig.key}"),
                            config=tour.export_config(f"isoscope-{fig.key}"))
            if not present:
                st.caption(f"**{fig.title}.** {fig.caption}")
    if step.link and not present:
        link(*step.link)


from_url()
present = st.session_state[key("learn_present")]
if present:
    st.markdown(PRESENTER_CSS, unsafe_allow_html=True)
    quiet_run()  # nothing below the step on a lecture screen
else:
    header(":material/school: Learn: spectral merging, step by step",
           "A guided tour for a first encounter (or a lecture), in the order of the paper. The geometry runs live on "
           "a toy: a pretrained 8×8 <i>layer</i> θ0 and three copies fine-tuned on three <i>tasks</i>, the third a "
           "weak one; the sliders set it for the whole tour. Accuracy and alignment come from real merges of the "
           "embedded digits zoo, beside the paper's published numbers. Presenter mode shows one step per screen "
           "(arrow keys move), and the address bar always links to what you see.")

top = st.columns([1.6, 1.2, 2.2, 2.2, 6]) if present else st.columns([1.6, 1.2, 2.6, 7])
top[0].toggle("Presenter", key=key("learn_present"), help="One step per screen, large type, no sidebar; ← → move.")
top[1].button("Reset", key=key("learn_reset"), on_click=reset, icon=":material/restart_alt:",
              help="Back to the default toy and step 1.")
with top[3].popover("Toy settings", icon=":material/tune:") if present else st.container():
    state = controls()
to_url()
step_no = st.session_state[key("learn_step")]
shown = [tour.STEP_KEYS[step_no - 1]] if present else list(tour.STEP_KEYS)
zoo = None  # the toy alone, should the zoo fail (the error shows in place)
with errors_in_place(stop=False):
    zoo = evidence(state)
zoo_key = (zoo.name, zoo.rule, zoo.value) if zoo is not None else ()
steps = [built_step(k, astuple(state), zoo_key, zoo) for k in shown]
top[2].download_button("Export tour (.html)", key=key("learn_handout"), file_name="isoscope-tour.html",
                       data=lambda: tour.render_handout(tour.tour(state, zoo), state).encode(), mime="text/html",
                       icon=":material/download:", help="One self-contained HTML page: every step, figure and caption, "
                                                        "the settings and the paper's citation.")
if not present:
    top[3].caption(f"Each chart's camera button saves a {tour.EXPORT_SIZE[0]}×{tour.EXPORT_SIZE[1]} SVG for slides, "
                   "titled with the settings and the paper.")

if present:
    show_step(steps[0], present=True)
    prev, where, nxt = st.columns([1, 4, 1])
    prev.button("◀ Previous", key=key("learn_prev"), on_click=move, args=(-1,), disabled=step_no == 1,
                width="stretch")
    where.progress(step_no / STEPS, text=f"Step {step_no} of {STEPS}")
    nxt.button("Next ▶", key=key("learn_next"), on_click=move, args=(1,), disabled=step_no == STEPS, width="stretch")
    st.iframe(NAV_SCRIPT % step_no, height=1)
else:
    for step in steps:
        show_step(step)
        st.divider()
