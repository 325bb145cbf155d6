"""The sidebar's selection as pages read it, without a Streamlit run."""

from __future__ import annotations

from merging.registry import all_methods
from ui.state import DEFAULT_METHOD, Selection, method_choice


def test_a_page_opened_on_its_own_takes_the_sidebars_default_method() -> None:
    """A served page opened by its URL before any session ran the app has no sidebar selection: it
    shows the sidebar's default method (Iso-CTS), not the registry's first."""
    names = list(all_methods())
    assert names[0] != DEFAULT_METHOD == "iso_cts"
    assert method_choice(names, Selection(zoo_spec="digits-tiny")) == "iso_cts"
    assert method_choice(names, Selection(zoo_spec="digits-tiny", method="cart")) == "cart"
    assert method_choice(["ties", "cart"], Selection(zoo_spec="digits-tiny")) == "ties"
