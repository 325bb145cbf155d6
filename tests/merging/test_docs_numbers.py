"""Numbers the docs quote from the code are the code's: the tolerance table of docs/engine.md
names each constant of merging/linalg.py and merging/methods/iso.py with its value, every such
constant has a row, and any "`NAME = value`" a doc writes equals the constant."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import merging.linalg as linalg
import merging.methods.iso as iso
from merging import settings

ROOT = Path(__file__).resolve().parents[2]
MODULES = (linalg, iso)
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e-?\d+)?(?:/\d+)?)(?![\w.])")
NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")
# module-level constants that are not thresholds: types, tables of other constants, a speed figure
# documented under Timings (checked below through its "`NAME = value`")
NOT_TOLERANCES = {"SVD", "FALLBACKS", "GRAM_TOP_KERNELS", "GRAM_PANELS", "PAPER", "ISO_C", "ISO_CTS"}


def _numbers(value: object) -> list[float]:
    """Every number inside a constant (dict values, tuples), dtypes and names aside."""
    if isinstance(value, bool) or isinstance(value, (torch.dtype, str)):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _numbers(v)]
    return []


def _written(text: str) -> list[float]:
    return [float(Fraction(m)) if "/" in m else float(m) for m in NUMBER.findall(text)]


def _constant(name: str) -> object:
    for module in MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    for setting in settings.SETTINGS.values():
        if setting.env == name:
            return setting.default
    raise AssertionError(f"the docs name {name}, which no module defines")


def _rows() -> list[tuple[str, str]]:
    doc = (ROOT / "docs" / "engine.md").read_text(encoding="utf-8")
    section = doc.split("## Tolerances", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return [(name.strip(), value.strip()) for name, value in rows[1:]]  # the header row aside


def test_every_tolerance_row_quotes_its_constants_value() -> None:
    for names, value in _rows():
        written = _written(value)
        for name in NAME.findall(names):
            for number in _numbers(_constant(name)):
                assert any(number == pytest.approx(w, rel=1e-9) for w in written), \
                    f"docs/engine.md gives {name} as '{value}', the code has {_constant(name)!r}"


def test_every_threshold_constant_has_a_row() -> None:
    documented = {n for names, _ in _rows() for n in NAME.findall(names)}
    constants = {name for module in MODULES for name, value in vars(module).items()
                 if re.fullmatch(r"[A-Z][A-Z0-9_]+", name) and name not in NOT_TOLERANCES and _numbers(value)}
    assert constants - documented == set()


def test_assignments_quoted_in_the_docs_equal_the_code() -> None:
    """Any "`NAME = value`" in README.md or docs/*.md equals the constant (when the code has it)."""
    quoted = re.compile(r"`([A-Z][A-Z0-9_]+) = ([^`]+)`")
    checked = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name, value in quoted.findall(path.read_text(encoding="utf-8")):
            if any(hasattr(m, name) for m in MODULES):
                assert _numbers(_constant(name)) == pytest.approx(_written(value)), f"{path.name}: {name} = {value}"
                checked += 1
    assert checked >= 1  # GRAM_PANELS under Timings at least


def test_the_readme_counts_the_unpinned_safeguards_as_the_table_does() -> None:
    doc = (ROOT / "docs" / "engine.md").read_text(encoding="utf-8").split("## Tolerances", 1)[1].split("\n## ", 1)[0]
    unpinned = sum("**still passes**" in line for line in doc.splitlines() if line.startswith("| `"))
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"{words[unpinned]} are not pinned by a fast test" in readme
    assert f"{words[unpinned].capitalize()} safeguards are not pinned" in " ".join(doc.split())
