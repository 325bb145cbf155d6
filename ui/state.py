"""Session-state keys (all prefixed ``iso_``) and the sidebar's selection, read by every page."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from merging import settings

PREFIX = "iso_"
SELECTION_KEY = PREFIX + "selection"
ZOO_ENV = settings.SETTINGS["zoo"].env
DEFAULT_ZOO = "digits"
DEFAULT_METHOD = "iso_cts"  # the sidebar's first choice


def key(name: str) -> str:
    """The session-state key for ``name`` (``iso_`` prefix, so nothing collides)."""
    return PREFIX + name


def default_zoo_spec() -> str:
    """The embedded zoo to open: $ISOSCOPE_ZOO (tests use ``digits-tiny``), else ``digits``."""
    return settings.value("zoo") or DEFAULT_ZOO


@dataclass(frozen=True)
class Selection:
    """Everything the sidebar decides; hashable so cached functions can key on it."""

    zoo_spec: str
    data_dir: str | None = None
    trust_pickle: bool = False
    pretrained: str | None = None  # θ0's file for a folder without one
    max_images: int | None = None  # the quick mode's evaluation budget per task and split (None: every image)
    device: str = "cpu"
    method: str | None = None
    params: tuple[tuple[str, float], ...] = ()
    alpha_mode: str = "validation"  # "validation" or "slider"
    alpha: float = 1.0
    embedded: bool = True

    @property
    def zoo_key(self) -> tuple[str, str | None, bool, str, str | None, int | None]:
        return (self.zoo_spec, self.data_dir, self.trust_pickle, self.device, self.pretrained, self.max_images)


def store_selection(sel: Selection) -> None:
    st.session_state[SELECTION_KEY] = sel


def selection() -> Selection:
    """The sidebar's current selection (the embedded default before the sidebar has run)."""
    return st.session_state.get(SELECTION_KEY) or Selection(zoo_spec=default_zoo_spec())


def method_choice(names: list[str], sel: Selection | None = None) -> str:
    """The sidebar's method among ``names``; before the sidebar has run (a page opened on its own),
    its default, DEFAULT_METHOD (else the first name)."""
    sel = sel or selection()
    return sel.method if sel.method in names else default_method(names)


def default_method(names: list[str]) -> str:
    """The sidebar's first choice among ``names``: DEFAULT_METHOD, else the first name."""
    return DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]


def params_for(method: str, sel: Selection | None = None) -> tuple[tuple[str, float], ...]:
    """The sidebar's parameters when ``method`` is the sidebar's method, else () (= defaults)."""
    sel = sel or selection()
    return sel.params if sel.method == method else ()


def alpha_choice(sel: Selection | None = None) -> float | None:
    """α for the evaluator: None means 'choose on validation' (fixed-α methods fix it themselves)."""
    sel = sel or selection()
    return None if sel.alpha_mode == "validation" else sel.alpha


def k_rule_choice(name: str, rule_box: object = st, value_box: object = st) -> tuple[str, float]:
    """(k_M rule, its value): a radio over ``analysis.sar.K_RULES`` (default ``DEFAULT_RULE``) in
    ``rule_box`` and that rule's slider in ``value_box``; widget keys are prefixed by ``name``."""
    from analysis.sar import DEFAULT_RULE, K_RULES

    names = list(K_RULES)
    rule = rule_box.radio("k_M rule", names, index=names.index(DEFAULT_RULE), key=key(f"{name}_rule"),
                          horizontal=True, format_func=lambda r: K_RULES[r].label, help=RULE_HELP)
    spec = K_RULES[rule]
    low, high, step = spec.slider
    value = value_box.slider(spec.value_label, low, high, spec.default, step,
                             key=key(f"{name}_{spec.cli_flag.lstrip('-')}"), help=spec.help)
    return rule, float(value)


RULE_HELP = ("How k_M, the number of the merged matrix's directions SAR projects on, is chosen. "
             "**Figure script** (default; it reproduces the paper's Fig. 3a): the authors' plotting code keeps the "
             "directions before the first one whose cumulative norm √(Σ_{i≤k} σi² / Σ σi²) exceeds the threshold "
             "(0.95 there, about ε ≈ 0.31 in Eq. 6 terms). **Eq. 6** (the paper's text): the smallest k with "
             "‖ΔM − Πk ΔM‖F ≤ ε‖ΔM‖F. ε bounds the Frobenius norm, not the energy: ε = 0.05 keeps 1 − ε² = "
             "99.75% of ‖ΔM‖F², so a flat-ish spectrum keeps nearly every direction and SAR is near 1 for every "
             "method. Either way k_M comes from the merge's own spectrum. For a flat spectrum (Iso-C, Iso-CTS) "
             "any k directions of a tied block would do; the app orders tied directions by how much of the Task "
             "Arithmetic sum they carry, as the authors' figure script does for Iso.")
