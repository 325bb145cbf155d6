"""What a deterministic per-point α search costs in-process (digits zoo, 2 threads, fresh stores).

    flock /tmp/isoscope-heavy.lock .venv/bin/python -m benchmarks.alpha_search [--zoo digits]

The 11-point Iso-CTS common-fraction sweep with α chosen on validation at every point, three ways,
each from an empty result store on one shared Merger (its decompositions warmed first by a
fixed-α pass that is not counted):
- ``warm``: the former hill-climb warm-started from the previous point's α (depends on the order);
- ``cold``: coarse-to-fine from scratch at every point (every 5th grid point, then hill-climb);
- ``exhaustive``: every α of the grid at every point (the grid argmax by definition).
Prints seconds, validation evaluations and the chosen α per point, and each time as a ratio
against ``warm`` measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from analysis.alpha import ALPHA_GRID, AlphaSearch, grid_alpha, search_alpha
from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.sweeps import fractions
from zoo import load_zoo

Search = Callable[[Callable[[float], float], float | None], AlphaSearch]
SEARCHES: dict[str, Search] = {
    "warm": lambda score, previous: search_alpha(score, start=previous),
    "cold": lambda score, previous: search_alpha(score),
    "exhaustive": lambda score, previous: grid_alpha(score),
}


def sweep(ev: Evaluator, search: Search) -> tuple[list[float], int, float]:
    """(α per point, validation evaluations, seconds) of the α-on-validation Iso-CTS sweep."""
    start, previous, chosen, evaluations = time.perf_counter(), None, [], 0
    for f in fractions(0.1):
        params = {"common_fraction": f}
        choice = search(lambda a: ev.val_score("iso_cts", params, a), previous)
        ev.accuracy("iso_cts", params, choice.alpha, "test")
        previous = choice.alpha
        chosen.append(choice.alpha)
        evaluations += choice.evaluations
    return chosen, evaluations, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="digits")
    args = p.parse_args()
    torch.set_num_threads(2)
    zoo = load_zoo(args.zoo)
    with tempfile.TemporaryDirectory() as tmp:
        warmup = Evaluator(zoo, store=ResultStore(Path(tmp) / "warmup.sqlite"))
        for f in fractions(0.1):  # decompositions and merged updates, shared by the runs below
            warmup.accuracy("iso_cts", {"common_fraction": f}, 1.0, "val")
        results = {}
        for name, search in SEARCHES.items():
            ev = Evaluator(zoo, merger=warmup.merger, store=ResultStore(Path(tmp) / f"{name}.sqlite"))
            ev.finetuned("val"), ev.finetuned("test"), ev.zero_shot("test")  # references, not counted
            results[name] = sweep(ev, search)
    reference = results["warm"][2]
    for name, (alphas, evaluations, seconds) in results.items():
        print(f"{name:>10}: {seconds:6.1f} s ({seconds / reference:4.2f}× warm), {evaluations:3d} val points "
              f"of {len(ALPHA_GRID) * len(alphas)}; α per f: {', '.join(f'{a:g}' for a in alphas)}")


if __name__ == "__main__":
    main()
