"""Isoscope: the Streamlit shell. Navigation and the shared sidebar; every view is a page."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Isoscope", page_icon="🔭", layout="wide")


def home() -> None:
    st.title("🔭 Isoscope")
    st.write("An interactive lab for spectral model merging. The views are being built.")


st.navigation([st.Page(home, title="Overview", default=True)]).run()
