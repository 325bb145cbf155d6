"""The rooms of docs/design.md: the pure core never imports streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_ALLOWED = {
    "merging": {"torch", "numpy", "scipy", "threadpoolctl", "safetensors", "merging"},
    "zoo": {"torch", "numpy", "safetensors", "merging", "zoo", "open_clip", "sklearn", "PIL", "torchvision",
            "datasets"},
    "analysis": {"torch", "numpy", "safetensors", "merging", "zoo", "analysis", "pandas", "plotly", "scipy", "ray"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(CORE_ALLOWED))
def test_core_rooms_import_only_what_design_allows(room: str) -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / room).rglob("*.py")):
        third_party = _imports(path) - stdlib
        assert "streamlit" not in third_party, f"{path} imports streamlit"
        assert third_party <= CORE_ALLOWED[room], f"{path} imports {third_party - CORE_ALLOWED[room]}"


SHELL = ("app.py", "pages", "ui")  # the Streamlit shell: app.py, pages/ and their helpers in ui/


def test_only_the_shell_imports_streamlit() -> None:
    """Outside the shell (and tests), no module imports streamlit; the shell reads the core."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "tests", "benchmarks", *SHELL}:  # docs/design.md, Rooms: these may import anything
            continue
        if "streamlit" in _imports(path):
            offenders.append(str(rel))
    assert not offenders, f"streamlit imported outside the shell: {offenders}"
    assert any("streamlit" in _imports(p) for p in (ROOT / "pages").glob("*.py"))
