"""AppTest helpers for the dashboard: the app runs on the small ``digits-tiny`` zoo (built once
per test session in the isolated cache), and charts are read back as plotly JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 180  # the first run builds digits-tiny (≈5 s on 2 cores) and its decompositions


@pytest.fixture(autouse=True)
def tiny_zoo_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ISOSCOPE_ZOO", "digits-tiny")
    monkeypatch.delenv("ISOSCOPE_ALLOWED_ROOTS", raising=False)
    _navigation_like_the_server(monkeypatch)
    yield


def _navigation_like_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest resets PagesManager's class flag ``uses_pages_directory`` before every run, so a
    rerun on a page whose name matches a file in pages/ executes that file alone (no app.py, no
    sidebar). A real server sets the flag once, and app.py's st.navigation turns it off for good;
    keep it off here too so AppTest runs the app as the server does."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


def open_page(page: str | None = None) -> AppTest:
    """The app on ``page`` (a path under pages/), after one run; fails on any exception."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert_clean(at)
    if page:
        at.switch_page(page).run()
        assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart with widget key ``key``."""
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert found, f"no chart {key!r}; charts: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def trace(fig: dict, name: str) -> dict:
    found = [t for t in fig["data"] if t.get("name") == name]
    assert found, f"no trace {name!r}; traces: {[t.get('name') for t in fig['data']]}"
    return found[0]


def values(data: object) -> np.ndarray:
    """A plotly JSON array as numpy (plain lists, or typed arrays ``{"dtype", "bdata", "shape"}``)."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return flat.reshape(shape) if shape else flat
    return np.asarray(data, dtype=float)


@pytest.fixture
def tour_evidence(one_thread: None) -> None:
    """The Learn tour's real merges of digits-tiny, put in the session's result store the way the
    page makes them (the page, or a server on the same cache, then reads every accuracy from it)."""
    from analysis.evaluation import Evaluator
    from analysis.store import ResultStore
    from analysis.tour_zoo import zoo_evidence
    from zoo import load_zoo

    zoo_evidence(Evaluator(load_zoo("digits-tiny"), store=ResultStore()), "digits-tiny", "figure", 0.95, curve=True)


@pytest.fixture(scope="session")
def e2e_zoo() -> Iterator[str]:
    """The zoo the end-to-end server opens: digits-tiny, or $ISOSCOPE_E2E_ZOO (``digits`` for the
    README screenshot). Must be requested before ``streamlit_server``, which copies the env."""
    import os

    spec = os.environ.get("ISOSCOPE_E2E_ZOO", "digits-tiny")
    old = os.environ.get("ISOSCOPE_ZOO")
    os.environ["ISOSCOPE_ZOO"] = spec
    yield spec
    if old is None:
        os.environ.pop("ISOSCOPE_ZOO", None)
    else:
        os.environ["ISOSCOPE_ZOO"] = old
