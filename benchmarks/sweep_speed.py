"""Sweep and redraw speed on the digits zoo (docs/design.md, Targets), 2 CPU threads, fresh store.

    flock /tmp/isoscope-cpu.lock .venv/bin/python -m benchmarks.sweep_speed [--zoo digits]

Prints, each from an empty result store (so every point is really evaluated):
- the 11-point Iso-CTS common-fraction sweep on every task at a fixed α (target ≤ 15 s);
- the same sweep with α chosen on validation at every point (target ≤ 60 s);
- the redraw of the spectrum/SAR views after a slider move (target ≤ 300 ms): the fraction
  boundary, the spectra of all layers, and the SAR table of a new Iso-CTS fraction.
Setup (loading the zoo, task vectors) is timed separately and not counted in the sweeps.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from analysis import figures
from analysis.decompositions import Decompositions
from analysis.evaluation import Evaluator
from analysis.sar import sar_table
from analysis.spectra import common_boundary, spectra
from analysis.store import ResultStore
from analysis.sweeps import fraction_sweep, fractions, sweep_average
from merging.merge import Merger
from zoo import load_zoo

FIXED_ALPHA = 1.0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _evaluator(zoo: Any, merger: Merger, folder: Path, name: str) -> Evaluator:
    return Evaluator(zoo, merger=merger, store=ResultStore(folder / f"{name}.sqlite"))


def sweeps(zoo: Any, merger: Merger, folder: Path) -> None:
    values = fractions(0.1)
    fixed = _evaluator(zoo, merger, folder, "fixed")
    table, seconds = timed(lambda: fraction_sweep(fixed, values, alpha=FIXED_ALPHA, splits=("test",)))
    best = sweep_average(table).sort_values("accuracy").iloc[-1]
    print(f"11-point Iso-CTS sweep, fixed α={FIXED_ALPHA}, {len(zoo.tasks)} tasks: {seconds:6.2f} s "
          f"(target ≤ 15 s; {fixed.evaluations} model×task evaluations; best f={best['value']:g}, "
          f"test {100 * best['accuracy']:.1f}%)")
    chosen = _evaluator(zoo, merger, folder, "chosen")
    table, seconds = timed(lambda: fraction_sweep(chosen, values))
    test = sweep_average(table[table["split"] == "test"])
    alphas = ", ".join(f"{a:g}" for a in test["alpha"])
    print(f"11-point Iso-CTS sweep, α chosen on val at every point:     {seconds:6.2f} s "
          f"(target ≤ 60 s; {chosen.evaluations} model×task evaluations; α per point: {alphas})")
    _, again = timed(lambda: fraction_sweep(chosen, values))
    print(f"the same sweep again (every point from the store):            {again:6.2f} s")


def redraws(merger: Merger, tasks: list[str]) -> None:
    dec = Decompositions(merger, tasks)
    _, first = timed(lambda: spectra(dec, {"iso_c": None, "iso_cts": None}))
    _, sar_first = timed(lambda: sar_table(dec, "iso_cts", {"common_fraction": 0.8}))
    layer = dec.labels[dec.keys[len(dec.keys) // 2]]

    def fraction_move() -> None:
        bound = common_boundary(dec, 0.7)
        frame = spectra(dec, {"iso_c": None, "iso_cts": None})
        row = bound[bound["layer"] == layer].iloc[0].to_dict()
        figures.spectrum_figure(frame, layer, row)
        figures.energy_figure(frame, layer, row)

    _, move = timed(fraction_move)

    def sar_move() -> None:
        figures.sar_heatmap(sar_table(dec, "iso_cts", {"common_fraction": 0.6}), "iso_cts")

    _, sar_new = timed(sar_move)
    print(f"spectra, all {len(dec.keys)} matrix layers, first time (SVDs):  {1000 * first:7.1f} ms")
    print(f"SAR table Iso-CTS, first time:                              {1000 * sar_first:7.1f} ms")
    print(f"redraw after a fraction move (boundary + spectra + 2 figs): {1000 * move:7.1f} ms (target ≤ 300 ms)")
    print(f"redraw SAR heatmap at a new Iso-CTS fraction (merge + SVDs): {1000 * sar_new:7.1f} ms (target ≤ 300 ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="digits")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    zoo, load = timed(lambda: load_zoo(args.zoo, device="cpu"))
    merger, build = timed(lambda: Merger(zoo.pretrained(), zoo.all_finetuned(), device="cpu"))
    print(f"zoo {zoo.name} ({len(zoo.tasks)} tasks) loaded in {load:.1f} s, merger in {build:.2f} s, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        sweeps(zoo, merger, Path(tmp))
    redraws(merger, list(zoo.tasks))


if __name__ == "__main__":
    main()
