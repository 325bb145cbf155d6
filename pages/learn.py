"""Learn: a guided tour of the ideas behind spectral merging, each with a tiny live example
(three tasks fine-tuning one 8×8 layer) and a link to the view that shows it on the real zoo."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from analysis.sar import sar
from analysis.style import method_color, style_figure
from merging.merge import Merger
from merging.methods.iso import common_rank
from ui import toy
from ui.core import errors_in_place
from ui.page import header, link
from ui.state import key

header(":material/school: Learn: spectral merging in five steps",
       "A guided tour for a first encounter (or a lecture). Each step explains one idea and shows it on a "
       "toy: a pretrained 8×8 <i>layer</i> θ0 and three copies fine-tuned on three <i>tasks</i>. Move the "
       "sliders and watch the numbers respond; then follow the link to the same picture on the real zoo. "
       "The merges below run the very engine the other views use.")


def _toy(shared: float, strength: float = 1.0) -> tuple[dict, list[dict]]:
    return toy.toy_zoo(shared=shared, strength=strength)


@st.fragment
def step_task_vector() -> None:
    st.subheader("1 · A task vector is what fine-tuning changed")
    st.markdown("Fine-tuning moves the weights from θ0 to θt. Their difference **τt = θt − θ0** is the "
                "*task vector*: everything the model learned for task t. Restricted to one 2-D weight it is "
                "a *task matrix* Δt. Task Arithmetic merges by adding task vectors: θ = θ0 + α·Σt τt.")
    strength = st.slider("Fine-tuning strength", 0.0, 2.0, 1.0, 0.1, key=key("learn_strength"),
                         help="Scales how far fine-tuning moved the weights.")
    pretrained, finetuned = _toy(shared=0.5, strength=strength)
    tau = toy.task_matrices(pretrained, finetuned)[0]  # (8, 8)
    st.plotly_chart(toy.heatmaps({"θ0 (pretrained)": pretrained[toy.KEY], "θ1 (fine-tuned)": finetuned[0][toy.KEY],
                                  "τ1 = θ1 − θ0": tau}), key=key("learn_fig_tv"))
    st.caption(f"‖τ1‖F = {float(tau.norm()):.3f} (it grows linearly with the strength).")
    link("overview", "Task-vector norms and similarities of the real zoo")


@st.fragment
def step_spectrum() -> None:
    st.subheader("2 · A spectrum shows how many directions a matrix uses")
    st.markdown("Any matrix is a sum of rank-one pieces σi·ui viᵀ (its SVD). The **singular values** σ1 ≥ σ2 ≥ … "
                "say how much weight each direction carries. Each toy task matrix has rank 2 (two non-zero σ). "
                "Summing tasks (Task Arithmetic) adds their spectra only when the tasks *share* directions: "
                "then the sum's top σ grows while the rest stays small, and the small directions, where "
                "tasks differ, are drowned out.")
    shared = st.slider("How much the tasks share", 0.0, 1.0, 0.5, 0.05, key=key("learn_shared"),
                       help="0: each task uses its own directions; 1: all tasks use the same ones.")
    pretrained, finetuned = _toy(shared)
    deltas = toy.task_matrices(pretrained, finetuned)
    curves = {f"task {i + 1}": toy.singular_values(d) for i, d in enumerate(deltas)}
    curves["TA sum"] = toy.singular_values(sum(deltas))
    st.plotly_chart(toy.spectrum_figure(curves, toy.method_color_map()), key=key("learn_fig_spectrum"))
    link("spectra", "Spectra of the real zoo, layer by layer")
    return None


def _merged_delta(merger: Merger, method: str, params: dict | None = None) -> torch.Tensor:
    return merger.update(method, params or {}).delta[toy.KEY]  # (8, 8)


def _before_after(shared: float, method: str, label: str, params: dict | None = None) -> dict[str, torch.Tensor]:
    """σ of the TA sum (before) and of ``method``'s merged toy matrix (after), by the real engine."""
    pretrained, finetuned = _toy(shared)
    merger = Merger(pretrained, finetuned, device="cpu")
    return {"TA sum": toy.singular_values(sum(toy.task_matrices(pretrained, finetuned))),
            label: toy.singular_values(_merged_delta(merger, method, params))}


@st.fragment
def step_flattening() -> None:
    st.subheader("3 · Flattening: Iso-C gives every direction the same weight")
    st.markdown("Iso-C keeps the *directions* of the Task Arithmetic sum S = Σt Δt = U Σ Vᵀ but replaces all "
                "its singular values by their mean: Δ = σ̄ U Vᵀ. The spectrum becomes *isotropic* (flat), so "
                "the weak directions of each task are no longer drowned by the dominant shared ones.")
    shared = st.slider("How much the tasks share", 0.0, 1.0, 0.7, 0.05, key=key("learn_shared_flat"))
    with errors_in_place(stop=False):
        curves = _before_after(shared, "iso_c", "Iso-C")
        st.plotly_chart(toy.spectrum_figure(curves, toy.method_color_map()), key=key("learn_fig_flat"))
    link("spectra", "Before and after flattening on the real zoo")


@st.fragment
def step_common() -> None:
    st.subheader("4 · A common subspace plus room for each task (Iso-CTS)")
    st.markdown("Iso-CTS keeps the top-k directions of the sum (the *common subspace*, k ≈ fraction × rank) and "
                "fills the remaining r − k slots with each task's strongest directions *outside* it, then "
                "flattens the lot. The dashed line is the boundary: left of it, shared knowledge; right of it, "
                "task-specific directions. With fraction 1 it is Iso-C.")
    fraction = st.slider("Common fraction", 0.0, 1.0, 0.5, 0.05, key=key("learn_fraction"))
    with errors_in_place(stop=False):
        curves = _before_after(0.5, "iso_cts", "Iso-CTS", {"common_fraction": fraction})
        k, _ = common_rank(toy.SIZE, toy.TASKS, fraction)
        st.plotly_chart(toy.spectrum_figure(curves, toy.method_color_map(), marker_at=k), key=key("learn_fig_common"))
    link("common", "Accuracy as the common fraction moves, on the real zoo")


@st.fragment
def step_alignment() -> None:
    st.subheader("5 · Alignment: does the merge keep each task's directions?")
    st.markdown("The **Subspace Alignment Ratio** SAR(Δt, ΔM) = ‖Πk Δt‖F / ‖Δt‖F, where Πk projects onto the top-k "
                "left singular vectors of the merged matrix ΔM, and k is the fewest that hold all but ε of its "
                "energy. SAR = 1 means task t lies entirely in the merge's dominant subspace. The paper finds that "
                "tasks with higher SAR lose less accuracy, and that flattening raises SAR for every task.")
    eps = st.slider("ε (energy left out)", 0.01, 0.5, 0.05, 0.01, key=key("learn_eps"))
    pretrained, finetuned = _toy(0.5)
    with errors_in_place(stop=False):
        merger = Merger(pretrained, finetuned, device="cpu")
        deltas = toy.task_matrices(pretrained, finetuned)
        rows = [{"task": f"task {i + 1}", "method": label, "SAR": float(sar(d, _merged_delta(merger, m), eps))}
                for label, m in (("Task Arithmetic", "task_arithmetic"), ("Iso-C", "iso_c"))
                for i, d in enumerate(deltas)]
        table = pd.DataFrame(rows)
        fig = go.Figure([go.Bar(x=g["task"], y=g["SAR"], name=label,
                                marker_color=method_color("iso_c" if label == "Iso-C" else "task_arithmetic"),
                                hovertemplate=f"{label}<br>%{{x}}: SAR %{{y:.3f}}<extra></extra>")
                         for label, g in table.groupby("method", sort=False)])
        fig.update_yaxes(title="SAR", range=[0, 1.05])
        st.plotly_chart(style_figure(fig, height=300), key=key("learn_fig_sar"))
    link("alignment", "SAR heatmaps and the SAR–accuracy correlation on the real zoo")


for step in (step_task_vector, step_spectrum, step_flattening, step_common, step_alignment):
    step()
    st.divider()
