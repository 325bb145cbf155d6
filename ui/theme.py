"""The app's stylesheet. Colours and figure layout live in ``analysis.style`` (shared with the
HTML report)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def inject_css() -> None:
    """Load assets/style.css once per run (small; cheaper than a component)."""
    css = ASSETS / "style.css"
    if css.is_file():
        st.html(f"<style>{css.read_text()}</style>")
