"""Overview view: the zoo's tasks, zero-shot vs fine-tuned accuracy, task-vector norms and
pairwise cosine similarity."""

from __future__ import annotations

import streamlit as st

from analysis import figures
from analysis.labels import layer_labels
from analysis.style import palette, task_colors
from ui import data
from ui.core import errors_in_place, progress_bar
from ui.models import current_evaluator, current_merger, current_zoo, decompositions
from ui.page import header, link
from ui.sampling import budget_caption, mean_with_se
from ui.state import key

header(":material/dashboard: Overview",
       "The zoo at a glance: which tasks there are, how well the pretrained model (zero-shot) and each fine-tuned "
       "model do on them, and how large and how similar the task vectors τt = θt − θ0 are. Read the accuracy bars "
       "as two references for any merge: zero-shot (the pretrained model) and fine-tuned (each task's expert). "
       "A merge usually lands between them, but not always: it can score below zero-shot on a task (negative "
       "NAI). A large norm means fine-tuning moved the weights far. A cosine near 0 means two task vectors are "
       "nearly orthogonal as flat vectors; that does not rule out a shared dominant subspace in a layer, which "
       "is what spectral merging builds on. What matters is how the tasks' singular <i>subspaces</i> overlap "
       "(next views). Pick a single layer to see where the tasks agree most.")

zoo = current_zoo()
merger = current_merger()
colors = task_colors(zoo.tasks)
pills = " ".join(f"<span class='iso-pill' style='background:{colors[t]}'>{t}</span>" for t in zoo.tasks)
st.markdown(f"**{zoo.name}** · {len(zoo.tasks)} tasks · {len(merger.matrix_keys)} matrix layers<br>{pills}",
            unsafe_allow_html=True)

if hasattr(zoo, "examples"):  # the embedded zoo ships its images: show what each task looks like
    with st.expander("Sample test images per task", expanded=False):
        for task, column in zip(zoo.tasks, st.columns(len(zoo.tasks))):
            column.image(zoo.examples(task, 4).reshape(-1, 32, 3), caption=task, width=48)

st.subheader("Zero-shot and fine-tuned accuracy")
if not zoo.has_data:
    st.warning("No evaluation data for this zoo: accuracy needs a data folder (sidebar). The task-vector "
               "geometry below needs only the weights.", icon=":material/folder_open:")
else:
    with progress_bar("Scoring the pretrained and fine-tuned models") as report, errors_in_place(stop=False):
        report(0.1, "zero-shot and fine-tuned, every task")
        refs = current_evaluator().reference_table()
        test = refs[refs["split"] == "test"]
        wide = test.pivot_table(index="task", columns="method", values="accuracy", sort=False).reset_index()
        fig = figures.reference_bars(wide,
                                    {"zero_shot": "zero-shot θ0", "finetuned": "fine-tuned θt"})
        fig.update_layout(title="Test accuracy per task (top-1)")
        st.plotly_chart(fig, key=key("overview_acc"))
        by_method = {m: part for m, part in test.groupby("method")}
        st.caption(f"Average: zero-shot {mean_with_se(by_method['zero_shot'])}, fine-tuned "
                   f"{mean_with_se(by_method['finetuned'])}. NAI measures a merge against this gap: 0 at "
                   "zero-shot, 1 at fine-tuned, negative below zero-shot.")
        budget_caption(zoo.max_images, test)

st.subheader("Task-vector geometry")
labels = layer_labels(merger.matrix_keys)
scope = st.selectbox("Parameters", ["all parameters", *merger.matrix_keys], key=key("overview_scope"),
                     format_func=lambda k: labels.get(k, k), help="All parameters, or one matrix layer.")
keys = None if scope == "all parameters" else (scope,)
with errors_in_place():
    norms, cosines = data.geometry(decompositions(), keys)
left, right = st.columns(2)
left.plotly_chart(figures.norm_bars(norms, palette(zoo.tasks)), key=key("overview_norms"))
right.plotly_chart(figures.cosine_heatmap(cosines), key=key("overview_cos"))
link("spectra", "Next: the spectra behind the merge")
