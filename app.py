"""Isoscope: the Streamlit shell. Page setup, the shared sidebar (ui/sidebar.py) and
navigation; every view is a thin page under pages/ over merging/, zoo/ and analysis/."""

from __future__ import annotations

import streamlit as st

from merging.runtime import use_huge_pages
from ui import sidebar
from ui.core import new_run_timings, show_timings, timed
from ui.page import PAGE_FILES
from ui.theme import inject_css

use_huge_pages()  # before the first tensor of this process (the app runs this script first)
st.set_page_config(page_title="Isoscope", page_icon="🔭", layout="wide",
                   menu_items={"About": "Isoscope: an interactive lab for spectral model merging."})
inject_css()

PAGES = {
    "Explore": [
        st.Page(PAGE_FILES["overview"], title="Overview", icon=":material/dashboard:", default=True),
        st.Page(PAGE_FILES["spectra"], title="Spectra", icon=":material/show_chart:"),
        st.Page(PAGE_FILES["alignment"], title="Alignment", icon=":material/explore:"),
        st.Page(PAGE_FILES["common"], title="Common subspace", icon=":material/tune:"),
    ],
    "Use": [st.Page(PAGE_FILES["merge"], title="Merge & export", icon=":material/download:")],
    "Teach": [st.Page(PAGE_FILES["learn"], title="Learn", icon=":material/school:")],
}

page = st.navigation(PAGES)
new_run_timings()
with timed("sidebar"):
    sidebar.render()
with timed(f"page {page.title}"):
    page.run()
show_timings()
