"""What the Ray path costs per unit, and what it should buy on real clusters (docs/cluster.md).

    flock /tmp/isoscope-heavy.lock .venv/bin/python -m benchmarks.cluster_overhead [--zoo digits]

1. **Per-unit overhead on this machine.** The 11-point Iso-CTS common-fraction sweep (α on
   validation at every point) runs in-process (1 thread, as each worker has) and then on a
   two-node local cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two 1-CPU
   nodes), each from an empty store. Per unit: the in-process time, the round trip on the
   cluster (submitted → rows committed by the driver) and the worker's own compute time inside
   it; the difference is scheduling, transfer and the driver's writes. Worker start-up (opening
   the zoo) is reported apart. On 2 cores a cluster cannot be faster: the overhead is the figure.
2. **A model of the real case.** One ViT-B/32 unit = one Iso-CTS merge (``--merge-s``: the
   engine's time from ``make bench``, 10.7 s on 2 threads here) plus, per task, 30 validation
   evaluations (the exhaustive α grid) and one test evaluation, at the per-image time of a random
   ViT-B/32 visual tower measured here (2 threads, batch 32). With U units, N workers and a
   per-unit overhead o, the wall time is ceil(U / N) · (unit + o) against U · unit in-process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from analysis.cluster import Cluster, ZooSpec, local_cluster, run_local, sweep_units
from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.sweeps import fractions

ALPHA_EVALUATIONS = 30  # the exhaustive grid 0.1…3.0
# (name, units, tasks, val images per task, test images per task): the paper's sweeps
REAL = [("ViT-B/32 × 8, 11 fractions", 11, 8, 5000, 7500), ("ViT-L/14 × 20, 11 fractions", 11, 20, 5000, 7500)]
LARGE_FACTOR = 7.7  # ViT-L/14 vs ViT-B/32 forward cost per image (GFLOPs, 81 vs 4.4 at 224², rounded down)


def in_process(zoo: str, units: list, folder: Path) -> list[float]:
    torch.set_num_threads(1)
    ev = Evaluator(ZooSpec(zoo, threads=1).open(), store=ResultStore(folder / "inprocess.sqlite"))
    ev.zero_shot("test")  # the references are not a unit: computed before the clock, as a worker does lazily
    times = []
    for unit in units:
        start = time.perf_counter()
        run_local([unit], ev)
        times.append(time.perf_counter() - start)
    return times


def on_cluster(zoo: str, units: list, folder: Path) -> tuple[float, list[tuple[str, float, float]]]:
    with local_cluster(nodes=2) as ray_cluster:
        start = time.perf_counter()
        with Cluster(ray_cluster.address, ZooSpec(zoo, threads=1)) as cluster:
            startup = time.perf_counter() - start
            cluster.run(units, ResultStore(folder / "cluster.sqlite"))
            return startup, cluster.timings


def image_seconds(batch: int = 32, repeat: int = 3) -> float:
    """Seconds per image of a random ViT-B/32 visual tower's forward pass (2 threads, no download)."""
    import open_clip

    torch.set_num_threads(2)
    model = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    images = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(images)
        best = min(_timed(lambda: model(images)) for _ in range(repeat))
    return best / batch


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="digits")
    p.add_argument("--merge-s", type=float, default=10.7, help="one Iso-CTS merge of ViT-B/32 × 8 (make bench)")
    args = p.parse_args()
    units = sweep_units("iso_cts", "common_fraction", fractions(0.1))
    with tempfile.TemporaryDirectory() as tmp:
        local = in_process(args.zoo, units, Path(tmp))
        startup, timings = on_cluster(args.zoo, units, Path(tmp))
    trips, computes = [t[1] for t in timings], [t[2] for t in timings]
    overheads = [a - b for a, b in zip(trips, computes)]
    overhead = statistics.median(overheads)
    print(f"{args.zoo} sweep, {len(units)} units, median per unit: in-process {statistics.median(local):.2f} s; "
          f"cluster round trip {statistics.median(trips):.2f} s, of which worker compute "
          f"{statistics.median(computes):.2f} s and scheduling + transfer + driver writes {overhead:.3f} s "
          f"({100 * overhead / statistics.median(trips):.1f}%); worker start-up {startup:.1f} s (once)")
    print(f"  totals: in-process {sum(local):.1f} s, on 2 one-CPU workers {sum(trips):.1f} s of round trips "
          f"(first unit per worker includes its decompositions)")
    per_image = image_seconds()
    print(f"ViT-B/32 visual forward here: {per_image * 1e3:.1f} ms per image ({1 / per_image:.0f} images/s, 2 threads)")
    for name, count, tasks, val, test in REAL:
        scale = LARGE_FACTOR if "L/14" in name else 1.0
        unit = args.merge_s * scale + tasks * (ALPHA_EVALUATIONS * val + test) * per_image * scale
        line = ", ".join(f"N={n}: {count * unit / (math.ceil(count / n) * (unit + overhead)):.1f}×"
                         for n in (1, 4, 8, 11))
        print(f"  {name}: one unit {unit / 3600:.1f} h on this CPU; expected speed-up on N workers: {line}")


if __name__ == "__main__":
    main()
