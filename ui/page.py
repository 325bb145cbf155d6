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


def inside_app() -> None:
    """Make sure the page runs inside app.py's navigation. On a freshly started server, whose first
    request is a page's own address (``/learn``), Streamlit takes the ``pages/`` folder for an old
    style multipage app and runs that file alone: no sidebar, file-name navigation, a narrow
    layout. app.py's ``st.navigation`` turns that mode off for good; here it is turned off and the
    run restarted, so app.py runs and shows the same page with everything around it."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def header(title: str, lead: str) -> None:
    """The page title and its explanation: what it shows and how to read it (inside the app)."""
    inside_app()
    st.title(title)
    st.markdown(f"<div class='iso-lead'>{lead}</div>", unsafe_allow_html=True)


def link(page: str, label: str, icon: str = ":material/arrow_forward:") -> None:
    st.page_link(PAGE_FILES[page], label=label, icon=icon)
