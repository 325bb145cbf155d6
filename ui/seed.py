"""Build the embedded zoo's shipped results (``analysis.seed``), so a fresh clone's first visit of
every page reads them instead of computing:

    python -m ui.seed [--zoo digits] [--out assets/zoo/digits-results.sqlite]

In an empty, temporary cache folder (no seeding from an older asset), it runs the report (every
registered method, α on validation), each method's default sweep (Iso-CTS's common fraction,
CART's rank ratio: α on validation at every point) and then opens every page of the app once
with Streamlit's AppTest, so whatever a page computes at its defaults lands in the store too;
the zoo's rows are then written to ``--out``. ``make build-zoo`` runs it after the zoo build.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ui.page import PAGE_FILES

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("ui.seed")


def _fill(spec: str) -> tuple[object, str]:
    """Run the report and the default sweeps into the (temporary) store; (store, fingerprint)."""
    from analysis.evaluation import Evaluator
    from analysis.report import build_report
    from analysis.sweeps import param_sweep
    from merging.registry import all_methods
    from zoo import load_zoo

    ev = Evaluator(load_zoo(spec))
    start = time.perf_counter()
    build_report(ev)
    log.info("report: %.0f s", time.perf_counter() - start)
    for method in all_methods().values():
        swept = method.swept()
        if swept is not None:
            start = time.perf_counter()
            param_sweep(ev, method.name, swept.name, swept.sweep)
            log.info("%s sweep over %s: %.0f s", method.name, swept.name, time.perf_counter() - start)
    return ev.store, ev.fingerprint


def _visit_pages() -> None:
    """Every page once, as a first visitor sees it (what it computes at its defaults is stored)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800).run()
    for name, path in PAGE_FILES.items():
        start = time.perf_counter()
        at.switch_page(path).run()
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        if problems:
            raise RuntimeError(f"page {name}: {problems[0]}")
        log.info("page %s: %.1f s", name, time.perf_counter() - start)


def build(spec: str, out: Path) -> dict[str, int]:
    from analysis.seed import export_seed

    with tempfile.TemporaryDirectory(prefix="isoscope-seed-") as cache:
        os.environ.update(ISOSCOPE_CACHE=cache, ISOSCOPE_ZOO=spec, ISOSCOPE_SEED_RESULTS="0")
        store, fingerprint = _fill(spec)
        _visit_pages()
        return export_seed(store, fingerprint, out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(prog="python -m ui.seed", description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits")
    p.add_argument("--out", type=Path, default=ROOT / "assets" / "zoo" / "digits-results.sqlite")
    args = p.parse_args(argv)
    counts = build(args.zoo, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2 ** 20:.1f} MiB): "
          + ", ".join(f"{n} {t} rows" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
