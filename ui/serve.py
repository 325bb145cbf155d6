"""Serve the app with the heavy imports already done, so the first browser session does not wait
for them (torch, open_clip and the core take about 3 s to import on 2 cores):

    python -m ui.serve [streamlit run flags, e.g. --server.port 8501]

Binds to 127.0.0.1 unless a flag says otherwise; everything else is ``streamlit run app.py``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"
DEFAULTS = {"--server.address": "127.0.0.1", "--server.headless": "true", "--browser.gatherUsageStats": "false"}
WARM = ("torch", "open_clip", "merging.methods", "zoo.folders", "zoo.digits", "analysis.evaluation",
        "analysis.figures", "analysis.sar", "analysis.spectra", "plotly.graph_objects")

log = logging.getLogger(__name__)


def warm() -> None:
    """Import what every page needs (each import is idempotent; a failure is left to the page)."""
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError as err:  # pragma: no cover - shown by the page that needs it
            log.warning("could not pre-import %s: %s", name, err)


def log_to_console(level: int = logging.INFO) -> None:
    """Isoscope's own loggers (merging, zoo, analysis, ui: page timings among them) to stderr, next to
    Streamlit's lines in the server log."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("merging", "zoo", "analysis", "ui"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    from merging.runtime import bounded_heap, use_huge_pages
    from streamlit.web import cli

    flags = list(sys.argv[1:] if argv is None else argv)
    for name, value in DEFAULTS.items():
        if not any(f == name or f.startswith(name + "=") for f in flags):
            flags += [name, value]
    use_huge_pages()
    bounded_heap()
    log_to_console()
    warm()
    sys.argv = ["streamlit", "run", str(APP), *flags]
    cli.main()


if __name__ == "__main__":
    main()
