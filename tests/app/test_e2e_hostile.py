"""End to end: hostile files cannot hurt the server. One browser session opens a folder of files
that hang, crash or blow up a naive loader (tests/merging/hostile_corpus.py) while a second
session keeps moving the Spectra slider on the digits zoo. The first sees an error in place, the
second's chart keeps answering, and the server is the same process afterwards."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.app.test_e2e import _settle
from tests.merging.hostile_corpus import CORPUS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# plain layout: pretrained.pt + one file per task; each one a different attack
HOSTILE = {"pretrained.pt": "tuple 10**6 deep as a key (C stack)", "MNIST.pt": "tuple DAG key (2**64 hash steps)",
           "SVHN.pt": "stride-0 view 2**13 x 2**13 of one element", "DTD.pt": "module fan-out 2**64 names"}


def _server_pid(url: str) -> int:
    """The PID of the process serving ``url`` (its command line names the port)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ui.serve" in args and port.encode() in args:
            return int(proc.name)
    raise AssertionError(f"no server process for {url}")


_KEYS = itertools.cycle(["ArrowLeft", "ArrowRight"])


def _move_slider(page, before: str) -> str:
    """0.80 → 0.50 and back, alternately: the chart's boundary annotation (common k) moves each time."""
    thumb = page.locator("[data-testid='stSlider']", has_text="Common fraction of Iso-CTS").get_by_role("slider")
    thumb.focus()
    key = next(_KEYS)
    for _ in range(6):
        page.keyboard.press(key)
    page.wait_for_function("before => { const chart = document.querySelector('.js-plotly-plot');"
                           " return chart !== null && chart.innerText !== before; }", arg=before,
                           timeout=60_000)  # the chart is briefly absent while it is redrawn
    return page.locator(".js-plotly-plot").first.inner_text()


def test_hostile_folder_in_one_session_leaves_the_server_and_other_sessions_working(
        e2e_zoo: str, streamlit_server: str, browser, tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, case in HOSTILE.items():
        (folder / name).write_bytes(CORPUS[case][1]())
    pid = _server_pid(streamlit_server)

    spectra = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    spectra.goto(f"{streamlit_server}/spectra", wait_until="domcontentloaded")
    _settle(spectra, "Common fraction of Iso-CTS", 2)
    shown = _move_slider(spectra, spectra.locator(".js-plotly-plot").first.inner_text())

    attacker = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    attacker.goto(streamlit_server, wait_until="domcontentloaded")
    attacker.get_by_text("Folder of checkpoints").first.click()
    box = attacker.get_by_role("textbox", name="Checkpoint folder")
    box.fill(str(folder))
    box.press("Enter")
    for _ in range(3):  # the other session keeps answering while the hostile folder is read
        shown = _move_slider(spectra, shown)
    error = attacker.locator("[data-testid='stAlertContentError']").first
    error.wait_for(timeout=120_000)
    assert "pretrained.pt" in error.inner_text() and "budget" in error.inner_text(), error.inner_text()
    assert attacker.locator("[data-testid='stException']").count() == 0
    shown = _move_slider(spectra, shown)
    assert spectra.locator("[data-testid='stException']").count() == 0
    assert _server_pid(streamlit_server) == pid
    attacker.close()
    spectra.close()
