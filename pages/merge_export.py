"""Merge & export view: the sidebar's method, parameters and α applied, scored per task, and the
merged encoder and tables offered for download."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis import figures
from analysis.style import palette, recolor
from merging.registry import get_method
from ui.core import errors_in_place, progress_bar
from ui.models import current_evaluator, current_zoo
from ui.page import header, link
from ui.sampling import budget_caption, mean_with_se, table_columns
from ui.state import DEFAULT_METHOD, alpha_choice, key, selection

header(":material/download: Merge & export",
       "Merge with the method, parameters and α chosen in the sidebar, check the result task by task against the "
       "pretrained model (zero-shot) and the fine-tuned experts, then download the merged encoder as safetensors and "
       "the tables as CSV. <b>Normalized accuracy</b> is merged ÷ fine-tuned: 100% means the merge lost nothing on "
       "that task. <b>NAI</b> is (merged − zero-shot) ÷ (fine-tuned − zero-shot): it is negative where the merge "
       "does worse than the pretrained model, which happens.")

sel = selection()
zoo = current_zoo()
ev = current_evaluator()
with errors_in_place():
    method = get_method(sel.method or DEFAULT_METHOD)
params = dict(sel.params)
st.markdown(f"**{method.display_name}** · " + (", ".join(f"{k} = {v:g}" for k, v in params.items()) or "no parameters")
            + f" · [{method.paper_url}]({method.paper_url})")


def merged_bytes(alpha: float) -> bytes:
    """The full merged encoder as safetensors bytes (merged and written key by key, read back)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "merged.safetensors"
        ev.merger.export(path, method.name, params, alpha, metadata={
            "method": method.name, "alpha": f"{alpha:g}", "params": str(params), "zoo": zoo.fingerprint})
        return path.read_bytes()


def csv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


fixed = method.alpha_for(len(zoo.tasks))
if not zoo.has_data:
    alpha = sel.alpha if fixed is None else fixed
    st.warning("This zoo has no evaluation data, so the merge cannot be scored: give a data folder in the sidebar. "
               f"You can still download the merge at α = {alpha:g}.", icon=":material/folder_open:")
    table = None
else:
    with progress_bar(f"Merging with {method.display_name} and scoring every task") as report, errors_in_place():
        report(0.05, "α on validation" if alpha_choice() is None else "scoring")
        table, choice = ev.table(method.name, params, alpha_choice())
        refs = ev.reference_table()
    alpha = choice.alpha
    test = table[table["split"] == "test"].reset_index(drop=True)
    c1, c2, c3, c4 = st.columns(4)
    zero = refs[(refs["split"] == "test") & (refs["method"] == "zero_shot")]["accuracy"].mean()
    c1.metric("Average test accuracy", mean_with_se(test), f"{test['accuracy'].mean() - zero:+.1%} vs zero-shot")
    c2.metric("Normalized accuracy", f"{test['normalized'].mean():.1%}")
    c3.metric("Mean NAI", f"{test['nai'].mean():.2f}")
    c4.metric("α", f"{alpha:g}", "chosen on validation" if alpha_choice() is None and fixed is None else "fixed",
              delta_color="off")
    fig = figures.reference_bars(test, {"zero_shot": "zero-shot θ0", "accuracy": method.display_name,
                                       "finetuned": "fine-tuned θt"})
    fig.update_layout(title=f"Per-task test accuracy: {method.display_name} against zero-shot and fine-tuned")
    st.plotly_chart(fig, key=key("merge_fig"))
    shown, se_config = table_columns(test, ["task", "zero_shot", "accuracy", "finetuned", "normalized", "nai"])
    st.dataframe(test[shown], hide_index=True, key=key("merge_table"),
                 column_config={c: st.column_config.NumberColumn(c.replace("_", "-"), format="percent")
                                for c in ("zero_shot", "accuracy", "finetuned", "normalized")}
                 | {"nai": st.column_config.NumberColumn("NAI", format="%.3f")} | se_config)
    budget_caption(zoo.max_images, test)

st.subheader("Download")
d1, d2, d3 = st.columns(3)
stem = f"{zoo.name}-{method.name}-alpha{alpha:g}"
d1.download_button("Merged encoder (.safetensors)", data=lambda: merged_bytes(alpha), file_name=f"{stem}.safetensors",
                   mime="application/octet-stream", key=key("dl_model"), icon=":material/download:", type="primary",
                   help="The full merged image-encoder state dict; the task heads are unchanged.")
if table is not None:
    d2.download_button("Accuracy table (.csv)", data=csv_bytes(table), file_name=f"{stem}-accuracy.csv",
                       mime="text/csv", key=key("dl_table"), help="Test and validation rows, with references.")
    d3.download_button("References (.csv)", data=csv_bytes(refs), file_name=f"{zoo.name}-references.csv",
                       mime="text/csv", key=key("dl_refs"), help="Zero-shot and fine-tuned accuracy per task.")
link("learn", "New to spectral merging? Take the guided tour", icon=":material/school:")
