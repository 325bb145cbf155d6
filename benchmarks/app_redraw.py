"""Dashboard redraw time after a slider move (docs/design.md, Targets: ≤ 300 ms on the digits zoo).

    flock /tmp/isoscope-cpu.lock .venv/bin/python -m benchmarks.app_redraw [--zoo digits] [--moves 8]

Drives the real app in Streamlit's AppTest (in process, 2 CPU threads): opens Spectra and
Alignment once (zoo, task vectors and first decompositions: timed separately as "first view"),
then moves each page's slider to ``--moves`` values it has not shown before. Two times per
move: the server-side redraw of the view's fragment (``ui.core.timed``: the new Iso-CTS merge
and SVDs for Spectra, the new SAR tables for Alignment, and building the plotly figures), and
the whole AppTest rerun around it (AppTest polls the script thread, adding a few ms). A browser
adds its own drawing time on top (plotly.js).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _run_timed(at: object) -> float:
    start = time.perf_counter()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return (time.perf_counter() - start) * 1000


def _open(page: str) -> tuple[object, float]:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    original = PagesManager.__init__

    def init(self: PagesManager, *args: object, **kwargs: object) -> None:  # as a server (see tests/app/conftest.py)
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init
    at = AppTest.from_file(APP, default_timeout=900)
    start = time.perf_counter()
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at, time.perf_counter() - start


def measure(page: str, view: str, slider: str, values: list[float]) -> None:
    at, first = _open(page)
    rerun, server = [], []
    for value in values:
        at.slider(key=slider).set_value(value)
        rerun.append(_run_timed(at))
        server.append(at.session_state["iso_timings"][view])
    print(f"{view:10s} first view {first:5.1f} s | {slider} moved {len(values)}× to new values: "
          f"redraw (server) median {statistics.median(server):4.0f} ms, worst {max(server):4.0f} ms; "
          f"AppTest rerun median {statistics.median(rerun):4.0f} ms, worst {max(rerun):4.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="digits")
    parser.add_argument("--moves", type=int, default=8)
    args = parser.parse_args()
    os.environ["ISOSCOPE_ZOO"] = args.zoo
    torch.set_num_threads(2)
    fractions = [round(0.75 - 0.05 * i, 2) for i in range(args.moves)]  # 0.75, 0.70, …: all new
    thresholds = [round(0.94 - 0.02 * i, 2) for i in range(args.moves)]  # the default k_M rule's slider
    print(f"zoo {args.zoo}, {torch.get_num_threads()} threads")
    measure("pages/spectra.py", "spectra", "iso_spectra_fraction", fractions)
    measure("pages/alignment.py", "alignment", "iso_align_threshold", thresholds)


if __name__ == "__main__":
    main()
