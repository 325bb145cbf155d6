"""First visit of every page on the embedded digits zoo, as on a fresh clone: an empty cache folder,
the app served as `make run` serves it, each page opened once in headless Chromium (a new tab per
page, in the sidebar's order), from navigation to its charts drawn and the app idle.

    .venv/bin/python -m benchmarks.first_visit [--zoo digits] [--reference]

The server opens the zoo on the first page (Overview), so that page's time includes the zoo's load;
the other pages are timed after it. With the shipped results (assets/zoo/digits-results.sqlite)
the store is seeded on first use and the pages read it. ``--reference`` also runs the same visits
with ISOSCOPE_SEED_RESULTS=0 in another empty cache folder (everything computed), the reference the
seeded times are compared with. The target is every page within 3 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.real_scale import _errors, served, visit

# (path, a text the page shows once it has rendered, charts expected), in the sidebar's order
PAGES = (
    ("", "Task-vector geometry", 3),
    ("spectra", "Common fraction of Iso-CTS", 2),
    ("alignment", "Does alignment predict accuracy?", 3),
    ("common_subspace", "Rank ratio ρ (CART)", 2),
    ("merge_export", "Download", 1),
)


def visits(zoo: str, seed: bool) -> dict[str, float]:
    """Seconds to each page's first render on a fresh cache folder."""
    os.environ["ISOSCOPE_SEED_RESULTS"] = "1" if seed else "0"
    out = {}
    with tempfile.TemporaryDirectory(prefix="isoscope-first-") as cache, served(Path(zoo), Path(cache)) as (browser, server):
        for path, marker, charts in PAGES:
            page, seconds = visit(browser, f"{server.url}/{path}", marker, charts, timeout_ms=1_800_000)
            out[path or "overview"] = seconds
            print(f"  {'seeded' if seed else 'computed'} {path or 'overview'}: {seconds:.1f} s; alerts: {_errors(page)}",
                  flush=True)
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
