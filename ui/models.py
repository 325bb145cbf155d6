"""The zoo and Merger behind the current sidebar selection, loaded once per process with a
visible progress bar, and errors shown in place."""

from __future__ import annotations

import streamlit as st

from analysis.decompositions import Decompositions
from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from merging.merge import Merger
from ui.core import cached, cached_value, errors_in_place, progress_bar, timed
from ui.state import Selection, selection
from zoo import Zoo, load_zoo


def _zoo_label(sel: Selection) -> str:
    if sel.embedded:
        return (f"Building the embedded **{sel.zoo_spec}** zoo (first launch only: it is cached on disk, "
                "later launches start from there)")
    return f"Loading checkpoints from {sel.zoo_spec}"


def current_zoo(sel: Selection | None = None) -> Zoo:
    """The ``zoo.Zoo`` for ``sel`` (default: the sidebar's)."""
    sel = sel or selection()
    if not sel.zoo_spec:
        st.info("Type the path of a checkpoint folder in the sidebar (or pick the embedded digits zoo).",
                icon=":material/folder_open:")
        st.stop()

    def build() -> Zoo:
        with timed("open the zoo"), progress_bar(_zoo_label(sel)) as report:
            extra = {"pretrained": sel.pretrained} if sel.pretrained else {}
            extra |= {"max_images": sel.max_images} if sel.max_images else {}
            return load_zoo(sel.zoo_spec, data=sel.data_dir, trust_pickle=sel.trust_pickle,
                            device=sel.device, progress=report, **extra)

    with errors_in_place():
        return cached("zoo", sel.zoo_key, build)


def current_merger(sel: Selection | None = None) -> Merger:
    """One ``merging.merge.Merger`` per zoo and device (its decompositions are cached inside)."""
    sel = sel or selection()
    zoo = current_zoo(sel)
    key = (zoo.fingerprint, sel.device)

    def build() -> Merger:
        with timed("task vectors (Merger)"), progress_bar("Computing task vectors") as report:
            report(0.1, "loading the fine-tuned models")
            return Merger(zoo.pretrained(), zoo.all_finetuned(), device=sel.device)

    with errors_in_place():
        return cached("merger", key, build)


def loaded_zoo(folder: str, data: str | None, trust: bool, pretrained: str | None,
               max_images: int | None = None) -> Zoo | None:
    """The zoo of this folder selection if some session already loaded it (never loads it)."""
    spec = Selection(zoo_spec=folder, data_dir=data, trust_pickle=trust, pretrained=pretrained,
                     device=selection().device, max_images=max_images)
    return cached_value("zoo", spec.zoo_key)


def require_data(zoo: Zoo, view: str) -> None:
    """Stop an accuracy view, saying what is missing, when the zoo has no evaluation data."""
    if not getattr(zoo, "has_data", True):
        gaps = "; ".join(getattr(zoo, "missing", lambda: [])()[:3])
        st.warning(f"**{view} needs evaluation data**, and this zoo has none{f' ({gaps})' if gaps else ''}. Give a "
                   "data folder in the sidebar: the authors' data location, Hugging Face datasets, or one folder "
                   "per task, `<data>/<Task>/{val,test}/<class>/<image>`. "
                   "The weight-space views (Spectra, Alignment's heatmap) work without it.", icon=":material/folder_open:")
        st.stop()


def current_evaluator(sel: Selection | None = None) -> Evaluator:
    """One ``analysis.evaluation.Evaluator`` per zoo and device: it shares the Merger, holds the
    cached decompositions (spectra, SAR) and reads/writes the on-disk result store."""
    sel = sel or selection()
    zoo = current_zoo(sel)
    merger = current_merger(sel)
    with errors_in_place():
        # the budget is part of the key: a sampled and a full zoo share weights and fingerprint, not scores
        return cached("evaluator", (zoo.fingerprint, zoo.max_images, sel.device),
                      lambda: Evaluator(zoo, merger=merger, store=ResultStore(), device=sel.device))


def decompositions(sel: Selection | None = None) -> Decompositions:
    """The evaluator's cached ``Decompositions`` (task and merged SVDs, computed once)."""
    return current_evaluator(sel).decompositions
