"""The rules that choose k_M, the number of the merged matrix's top left singular directions SAR
projects on (Marczak et al., "No Task Left Behind", ICML 2025, Eq. 6, and the authors' Fig. 3a
script): one registry, ``K_RULES``, and one default, ``DEFAULT_RULE``, read by every page, the
report, the CLI and the Learn tour. numpy only, so the CLI can build its options without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_EPS = 0.05


def alignment_rank(sigma: Any, eps: float = DEFAULT_EPS) -> int:
    """k_M of Eq. 6 from the singular values σ (descending) of ΔM; 0 for a zero matrix."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])  # tail[k] = Σ_{i>k} σi², k = 0..r
    return int(np.argmax(np.sqrt(tail) <= eps * np.sqrt(s2.sum())))


def figure_rank(sigma: Any, threshold: float = 0.95) -> int:
    """k_M of the authors' figure script: the number of directions before the first whose
    cumulative norm √(Σ_{i≤k} σi² / Σ σi²) exceeds ``threshold``; 0 for a zero matrix."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    total = s2.sum()
    if total == 0:
        return 0
    above = np.sqrt(np.cumsum(s2) / total) > threshold  # (r,)
    return int(np.argmax(above)) if above.any() else len(s2)


@dataclass(frozen=True)
class KRule:
    """One way of choosing k_M, with its value's default, range and how it reads."""

    name: str  # "eq6" | "figure": the CLI's --k-rule and the stored choice
    label: str  # how the rule reads in a selector
    value_label: str  # what its value is, for a slider
    rank: Callable[[Any, float], int]  # (σ descending, value) -> k_M
    default: float
    low: float  # the value's mathematical range, low/high included as the flags say
    high: float
    low_open: bool
    high_open: bool
    slider: tuple[float, float, float]  # (min, max, step) offered by the views
    cli_flag: str  # the CLI option that sets the value
    help: str  # one line: what a larger value does

    @property
    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def valid(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


K_RULES: dict[str, KRule] = {rule.name: rule for rule in (
    KRule("figure", "figure script (Fig. 3a)", "threshold on the cumulative norm √(Σ_{i≤k} σi² / Σ σi²)",
          figure_rank, 0.95, 0.0, 1.0, True, False, (0.5, 0.99, 0.01), "--threshold",
          "The figure script's 0.95 is about ε ≈ 0.31 in Eq. 6 terms. Smaller threshold: smaller subspace, "
          "lower SAR."),
    KRule("eq6", "Eq. 6 (ε)", "ε: bound on the Frobenius norm left out, ‖ΔM − Πk ΔM‖F ≤ ε‖ΔM‖F",
          alignment_rank, DEFAULT_EPS, 0.0, 1.0, False, True, (0.01, 0.5, 0.01), "--eps",
          "Paper default 0.05, which keeps 99.75% of the energy ‖ΔM‖F². Larger ε: smaller subspace, lower SAR."),
)}
DEFAULT_RULE = "figure"  # reproduces the paper's Fig. 3a


def k_rule(rule: str) -> KRule:
    """The registered rule called ``rule`` (ValueError naming the choices otherwise)."""
    try:
        return K_RULES[rule]
    except KeyError:
        raise ValueError(f"unknown k_M rule {rule!r}; choose one of {sorted(K_RULES)}") from None


def rule_value(rule: str, value: float | None = None) -> float:
    """``value`` checked against ``rule``'s range, or the rule's default when None."""
    spec = k_rule(rule)
    value = spec.default if value is None else float(value)
    if not spec.valid(value):
        raise ValueError(f"the {rule} rule's value must be in {spec.interval}, got {value}")
    return value


def rank_by_rule(sigma: Any, rule: str = DEFAULT_RULE, value: float | None = None) -> int:
    """k_M by ``rule`` ("eq6" with ε, or "figure" with its threshold); ``value`` None: its default."""
    return k_rule(rule).rank(sigma, rule_value(rule, value))
