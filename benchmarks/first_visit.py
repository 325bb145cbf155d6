"""First visit of every page on the embedded digits zoo, as on a fresh clone: an empty cache folder,
the app served as `make run` serves it, the app opened in headless Chromium and each page reached
once by a click on its sidebar link, in the sidebar's order, as a visitor does: from the click to
the page's charts drawn and the app idle.

    .venv/bin/python -m benchmarks.first_visit [--zoo digits] [--reference]

The first page (Overview, opened by its address) includes the app's start and the zoo's load;
the other pages are timed after it. With the shipped results (assets/zoo/digits-results.sqlite)
the store is seeded on first use and the pages read it. ``--reference`` also runs the same visits
with ISOSCOPE_SEED_RESULTS=0 in another empty cache folder (everything computed), the reference the
seeded times are compared with. The target is every page within 3 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.real_scale import _errors, _settle, served, visit
from tests.app.page_markers import PAGES


def visits(zoo: str, seed: bool) -> dict[str, float]:
    """Seconds to each page's first render on a fresh cache folder."""
    os.environ["ISOSCOPE_SEED_RESULTS"] = "1" if seed else "0"
    out = {}
    with tempfile.TemporaryDirectory(prefix="isoscope-first-") as cache, served(Path(zoo), Path(cache)) as (browser, server):
        (title, _path, marker, charts), *rest = PAGES
        page, out[title] = visit(browser, server.url, marker, charts, timeout_ms=1_800_000)  # opens the zoo
        for title, _path, marker, charts in rest:
            link = page.locator("[data-testid='stSidebarNav'] a", has_text=title).first
            start = time.perf_counter()
            link.click()
            _settle(page, marker, charts, 1_800_000)
            out[title] = time.perf_counter() - start
        for title, seconds in out.items():
            print(f"  {'seeded' if seed else 'computed'} {title}: {seconds:.1f} s", flush=True)
        print(f"  alerts: {_errors(page)}", flush=True)
        page.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits")
    p.add_argument("--reference", action="store_true", help="also time the visits without the shipped results")
    args = p.parse_args()
    seeded = visits(args.zoo, True)
    reference = visits(args.zoo, False) if args.reference else {}
    print("\n| page | first visit, shipped results | without them | ratio | target ≤ 3 s |")
    print("|---|---|---|---|---|")
    for name, seconds in seeded.items():
        ref = reference.get(name)
        ratio = f"{ref / seconds:.0f}× faster" if ref else "–"
        print(f"| {name} | {seconds:.1f} s | {f'{ref:.1f} s' if ref else '–'} | {ratio} | {'✔' if seconds <= 3 else '✘'} |")


if __name__ == "__main__":
    main()
