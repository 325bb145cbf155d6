"""Page furniture: title, the one-paragraph explanation, links between views."""

from __future__ import annotations

import streamlit as st

PAGE_FILES = {
    "overview": "pages/overview.py",
    "spectra": "pages/spectra.py",
    "alignment": "pages/alignment.py",
    "common": "pages/common_subspace.py",
    "merge": "pages/merge_export.py",
    "learn": "pages/learn.py",
}


def header(title: str, lead: str) -> None:
    """The page title and its explanation: what it shows and how to read it."""
    st.title(title)
    st.markdown(f"<div class='iso-lead'>{lead}</div>", unsafe_allow_html=True)


def link(page: str, label: str, icon: str = ":material/arrow_forward:") -> None:
    st.page_link(PAGE_FILES[page], label=label, icon=icon)
