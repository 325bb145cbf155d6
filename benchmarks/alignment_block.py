"""What the Alignment view computes for one ViT-B/32 block, in process (no server, no folder).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.alignment_block [--methods all] [--threads 1] [--profile]

One transformer block's four matrices (in_proj 2304×768, out_proj 768², c_fc 3072×768,
c_proj 768×3072) with T = 8 task vectors drawn as ``benchmarks.real_scale`` draws them (random
Gaussian factors, σi ∝ 0.99^i), held in memory. The Alignment view's per-layer work
(``ui.data.prepare``: ‖Δt‖, then σ(ΔM) and the projections ‖u_iᵀΔt‖² of every compared method,
layer by layer) runs on a fresh Merger and ``Decompositions``, and the time of each method is
printed (first method on a layer pays for what later ones share: the sum's SVD, the reads).
``--profile`` adds the functions with the most own time (cProfile). ``--repeat`` keeps the best
of N fresh runs. Multiply by 12 for the tower's blocks.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import time
from collections.abc import Sequence

import torch

from analysis.decompositions import Decompositions
from benchmarks.real_scale import _tau
from merging.merge import Merger
from merging.registry import all_methods
from merging.runtime import use_huge_pages

BLOCK = [("transformer.resblocks.0.attn.in_proj_weight", (2304, 768)),
         ("transformer.resblocks.0.attn.out_proj.weight", (768, 768)),
         ("transformer.resblocks.0.mlp.c_fc.weight", (3072, 768)),
         ("transformer.resblocks.0.mlp.c_proj.weight", (768, 3072))]

log = logging.getLogger("benchmarks.alignment_block")


def block_merger(tasks: int = 8, seed: int = 0) -> Merger:
    """A Merger over one ViT-B/32 block: θ0 random, θt = θ0 + τt (fp32, in memory)."""
    gen = torch.Generator().manual_seed(seed)
    pre = {key: 0.02 * torch.randn(*shape, generator=gen) for key, shape in BLOCK}
    fine = [{key: pre[key] + _tau(shape, gen, 0.01) for key, shape in BLOCK} for _ in range(tasks)]
    return Merger(pre, fine, device="cpu")


def run(merger: Merger, methods: Sequence[str]) -> dict[str, float]:
    """Seconds per method over the block (and "norms"), the way ``ui.data.prepare`` walks it."""
    merger.clear_cache()
    dec = Decompositions(merger)
    times = dict.fromkeys(["norms", *methods], 0.0)
    for key in dec.keys:
        start = time.perf_counter()
        dec.norms(key)
        times["norms"] += time.perf_counter() - start
        for method in methods:
            start = time.perf_counter()
            dec.merged_layer(key, method)
            times[method] += time.perf_counter() - start
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="all",
                   help="comma-separated registry names, in the page's order (default: all registered)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="best of N fresh runs per method")
    p.add_argument("--profile", action="store_true", help="print the 25 functions with the most own time")
    args = p.parse_args()
    use_huge_pages()
    torch.set_num_threads(args.threads)
    methods = list(all_methods()) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    merger = block_merger(args.tasks)
    merger.shared("ties")  # TIES's model-wide thresholds: a separate streaming pass, not timed
    best: dict[str, float] = {}
    profiler = cProfile.Profile() if args.profile else None
    for _ in range(args.repeat):
        if profiler:
            profiler.enable()
        times = run(merger, methods)
        if profiler:
            profiler.disable()
        best = {k: min(v, best.get(k, v)) for k, v in times.items()}
    for name, seconds in best.items():
        print(f"{name:18s} {seconds:7.2f} s")
    print(f"{'total':18s} {sum(best.values()):7.2f} s  ({args.threads} thread(s), T = {args.tasks})")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
