"""One settings module: every variable read from outside, its default, and the docs table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from merging import settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_table_is_the_modules() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    table = doc.split("-->\n", 1)[1].split("\n<!-- end", 1)[0].strip()
    assert table == settings.markdown_table()


# The only other reads of the environment, none of them Isoscope's own: PyTorch's huge-page switch
# and Hugging Face's cache folders (to find files already downloaded).
OTHER_READERS = {"merging/runtime.py", "zoo/pretrained.py"}


def test_no_module_reads_the_environment_but_settings() -> None:
    """Every variable the app, the engine and the analysis read goes through merging.settings (setting one
    for a child process, as ui.seed does, is not reading it)."""
    offenders = []
    for room in ("merging", "zoo", "analysis", "ui", "pages"):
        for path in (ROOT / room).rglob("*.py"):
            name = str(path.relative_to(ROOT))
            code = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                             if not line.lstrip().startswith(("#", '"', "'")))
            if re.search(r"os\.environ(\.get\(|\[)|getenv\(", code) and name not in OTHER_READERS \
                    and name != "merging/settings.py":
                offenders.append(name)
    assert offenders == []


@pytest.mark.parametrize("name, raw, want", [
    ("layer_cache", "64", 64 * 2 ** 20),
    ("layer_cache", "0.5", 2 ** 19),
    ("layer_cache", "lots", 512 * 2 ** 20),  # unparsable: the default
    ("layer_cache", "-3", 512 * 2 ** 20),
    ("layer_cache", "", 512 * 2 ** 20),  # empty: the default
    ("stream_chunk", "300", 300),
    ("device", " cpu ", "cpu"),
    ("allowed_roots", "", []),  # set but empty: nothing allowed
])
def test_values_come_from_the_environment_at_call_time(name: str, raw: str, want: object,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.SETTINGS[name].env, raw)
    assert settings.value(name) == want
    monkeypatch.delenv(settings.SETTINGS[name].env)
    assert settings.value(name) == settings.SETTINGS[name].default


def test_each_budget_reaches_what_it_bounds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Set from outside, each budget changes the object that uses it."""
    from analysis.decompositions import Decompositions
    from merging.merge import Merger
    from tests.merging.conftest import make_models

    monkeypatch.setenv("ISOSCOPE_LAYER_CACHE_MB", "1")
    monkeypatch.setenv("ISOSCOPE_RESULT_CACHE_MB", "2")
    merger = Merger(*make_models(2))
    assert merger.cache_bytes == 2 ** 20
    assert Decompositions(merger)._results.max_bytes == 2 * 2 ** 20
    monkeypatch.setenv("ISOSCOPE_CACHE", str(tmp_path))
    from merging.paths import cache_root

    assert cache_root() == tmp_path


def test_a_tiny_header_budget_refuses_a_real_file(tmp_path: Path) -> None:
    """ISOSCOPE_MAX_HEADER_MB really bounds what the loader reads (a subprocess: set from outside)."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({f"w{i}": torch.zeros(1) for i in range(200)}, str(path))  # a header of ~10 KB
    code = ("import sys; from merging.io import open_checkpoint; from merging.errors import IsoscopeError\n"
            f"try:\n    open_checkpoint({str(path)!r})\nexcept IsoscopeError as e:\n    print('refused', e); sys.exit(0)\n"
            "print('opened')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"ISOSCOPE_MAX_HEADER_MB": "0.001", "PATH": "/usr/bin:/bin"})
    assert out.stdout.startswith("refused"), out.stdout + out.stderr
