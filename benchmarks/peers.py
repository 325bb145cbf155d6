"""Isoscope's merge call against what a user would pick instead: FusionBench and mergekit.

    flock /tmp/isoscope-heavy.lock .venv/bin/python -m benchmarks.peers                 # 12 blocks
    flock /tmp/isoscope-heavy.lock .venv/bin/python -m benchmarks.peers --blocks 2 --repeat 3

Each peer gets its own virtual environment outside the project's ``.venv`` (under
``$ISOSCOPE_CACHE/peers``, default ``~/.cache/isoscope/peers``), created on first use from the
package index with the project's torch pin installed first, so both sides run the same torch. A
peer that cannot be installed is skipped, and the table says so.

Workload: an open_clip ViT-B/32 visual tower's state dict (``--blocks`` residual blocks, 12 for
the real one), θ0 random, T fine-tunes whose 2-D updates are U·diag(1e-2·0.99^i)·Vᵀ with random
orthonormal U, V (``benchmarks.merge_speed.smooth_task_matrix``) and whose other tensors move by
small noise; float32 safetensors written once to a cache folder.

Every configuration (implementation × method) runs in its own process
(``benchmarks/peer_run.py``), under an RSS limit (``--max-gb``; a process above it is killed and
reported as "over N GB"), interleaved, the order reversed every repetition. "Merge" is the merge
call on state dicts already in memory; the table reports medians, each process's peak RSS and
each peer output's relative Frobenius difference to Isoscope's update θ − θ0, and below it the
linear-algebra routes Isoscope took per layer shape (``merging.routes``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks.merge_speed import smooth_task_matrix, visual_tower_spec
from merging.paths import cache_root
from merging.runtime import use_huge_pages

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "peer_run.py"
TORCH_PIN = ("torch==2.14.1", "torchvision==0.29.1")
log = logging.getLogger("benchmarks.peers")


@dataclass(frozen=True)
class Peer:
    """A library merged against: its package pin and the methods its adapter calls."""

    name: str  # --impl of peer_run.py
    label: str
    package: str  # pip requirement
    methods: tuple[str, ...]


PEERS = (
    Peer("fusion_bench", "FusionBench", "fusion-bench==0.2.33",
         ("task_arithmetic", "weight_averaging", "ties", "tsv_m", "iso_c", "iso_cts")),
    Peer("mergekit", "mergekit", "mergekit==0.1.5", ("task_arithmetic", "weight_averaging", "ties")),
)
ISOSCOPE = "isoscope"
METHODS = ("task_arithmetic", "weight_averaging", "ties", "tsv_m", "iso_c", "iso_cts")


# -- peer environments ---------------------------------------------------------------------------

def peers_root() -> Path:
    return cache_root() / "peers"


def venv_python(peer: Peer, root: Path) -> Path:
    return root / peer.package.split("==")[0] / "bin" / "python"


def ensure_venv(peer: Peer, root: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                ) -> tuple[Path | None, str]:
    """(the peer venv's python, "") once installed, or (None, why it could not be installed).
    The torch pin goes in first, and again with the peer, so pip keeps it or says why not."""
    python = venv_python(peer, root)
    stamp = python.parent.parent / ".isoscope-installed"
    if stamp.exists() and stamp.read_text() == peer.package:
        return python, ""
    steps = [[sys.executable, "-m", "venv", str(python.parent.parent)],
             [str(python), "-m", "pip", "install", "-q", *TORCH_PIN],
             [str(python), "-m", "pip", "install", "-q", peer.package, *TORCH_PIN]]
    for step in steps:
        if not python.exists() and step[0] == str(python):
            return None, "venv creation failed"
        print(f"installing {peer.label}: {' '.join(step[-3:])}", flush=True)
        done = run(step, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [x for x in (done.stderr or "").splitlines() if x.strip() and "is ignored" not in x]
            return None, (lines[-1] if lines else f"exit {done.returncode}")[:200]
    stamp.write_text(peer.package)
    return python, ""


# -- workload -----------------------------------------------------------------------------------

def workload_dir(blocks: int, tasks: int, seed: int = 0) -> Path:
    return cache_root() / "peers" / f"vit-b32-{blocks}b-{tasks}t-s{seed}"


def write_workload(folder: Path, blocks: int, tasks: int, seed: int = 0) -> Path:
    """θ0 and T fine-tunes of a ViT-B/32 visual tower as float32 safetensors (kept once written)."""
    done = folder / "done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    spec = visual_tower_spec(width=768, layers=blocks, patch=32, grid=7, out=512)
    pre = {key: 0.02 * torch.randn(*shape, generator=gen) for key, shape in spec}
    save_file(pre, str(folder / "pre.safetensors"))
    for t in range(tasks):
        ft = {key: value + (smooth_task_matrix(*value.shape, gen) if value.dim() == 2
                            else 1e-3 * torch.randn(*value.shape, generator=gen)) for key, value in pre.items()}
        save_file(ft, str(folder / f"ft{t}.safetensors"))
    done.write_text("ok")
    return folder


# -- one process --------------------------------------------------------------------------------

@dataclass
class Run:
    """One merge process's outcome."""

    seconds: float | None = None
    peak_gb: float | None = None
    over_gb: float | None = None  # killed above this RSS
    error: str = ""
    routes: dict = field(default_factory=dict)


def rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 0.0


def run_one(python: Path, impl: str, method: str, folder: Path, out: Path, max_gb: float, threads: int,
            timeout_s: float) -> Run:
    """``peer_run.py`` in its own process, killed when its RSS passes ``max_gb``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [str(python), str(RUNNER), "--impl", impl, "--method", method, "--dir", str(folder),
           "--out", str(out), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    over = threading.Event()

    def watch() -> None:
        while proc.poll() is None:
            if rss_gb(proc.pid) > max_gb:
                over.set()
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Run(error=f"over {timeout_s:.0f} s")
    watcher.join()
    if over.is_set():
        return Run(over_gb=max_gb)
    return parse_run(proc.returncode, stdout, stderr)


def parse_run(code: int, stdout: str, stderr: str) -> Run:
    """The runner's JSON line, or the reason it gave none."""
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    got = json.loads(lines[-1]) if lines else {}
    if code == 0 and "seconds" in got:
        return Run(seconds=got["seconds"], peak_gb=got["peak_rss_gb"], routes=got.get("routes", {}))
    if "unsupported" in got:
        return Run(error="no such method")
    return Run(error=failure(stderr, code))


def failure(stderr: str, code: int) -> str:
    """The exception a failed run ended with, its message's lines joined (a LAPACK error spans
    several), else its last line of stderr."""
    tail = [x.strip() for x in stderr.splitlines() if x.strip()]
    starts = [i for i, x in enumerate(tail) if re.match(r"^[\w.]+(Error|Exception)\b", x)]
    text = " ".join(tail[starts[-1]:]) if starts else (tail[-1] if tail else f"exit {code}")
    return text[:160]


# -- comparing outputs ---------------------------------------------------------------------------

def relative_difference(pre: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor],
                        theirs: Mapping[str, torch.Tensor]) -> float:
    """‖Δ_theirs − Δ_ours‖_F / ‖Δ_ours‖_F over every key, Δ = θ − θ0 (float64 sums)."""
    num = den = 0.0
    for key, base in pre.items():
        a, b = ours[key].double() - base.double(), theirs[key].double() - base.double()
        num += float((b - a).square().sum())
        den += float(a.square().sum())
    return (num / den) ** 0.5 if den > 0 else float("nan")


# -- the table ----------------------------------------------------------------------------------

def median_run(runs: Sequence[Run]) -> Run:
    """The median seconds and the largest peak of successful runs; else the first failure."""
    good = [r for r in runs if r.seconds is not None]
    if not good:
        return runs[0] if runs else Run(error="not run")
    return Run(seconds=statistics.median(r.seconds for r in good), peak_gb=max(r.peak_gb for r in good),
               routes=good[-1].routes)


def cell(run: Run | None) -> str:
    if run is None:
        return "—"
    if run.over_gb is not None:
        return f"over {run.over_gb:g} GB"
    if run.seconds is None:
        return run.error or "failed"
    return f"{run.seconds:.2f} s ({run.peak_gb:.1f} GB)"


def ahead(ours: Run | None, peer: Run | None) -> float | None:
    """Peer time / Isoscope time, where both ran."""
    if ours is None or peer is None or ours.seconds is None or peer.seconds is None:
        return None
    return peer.seconds / ours.seconds


def table(results: Mapping[tuple[str, str], Run], diffs: Mapping[tuple[str, str], float],
          peers: Sequence[Peer], methods: Sequence[str]) -> list[str]:
    """Markdown rows: per method Isoscope's median (peak RSS), each peer's, the relative
    difference of each peer's output, and how far ahead Isoscope is of each and of the fastest."""
    head = ["method", "Isoscope"] + [p.label for p in peers] + [f"diff vs {p.label}" for p in peers] + \
           [f"ahead of {p.label}" for p in peers] + ["ahead of the fastest peer"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        ours = results.get((ISOSCOPE, method))
        cells = [method, cell(ours)] + [cell(results.get((p.name, method))) for p in peers]
        cells += [f"{diffs[(p.name, method)]:.1e}" if (p.name, method) in diffs else "—" for p in peers]
        ratios = [ahead(ours, results.get((p.name, method))) for p in peers]
        cells += [f"{r:.2f}×" if r is not None else "—" for r in ratios]
        known = [r for r in ratios if r is not None]
        cells.append(f"**{min(known):.2f}×**" if known else "—")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def route_lines(routes_by_method: Mapping[str, Mapping[str, Mapping[str, int]]]) -> list[str]:
    """'method  shape: route ×count, …' per method and layer shape."""
    lines = []
    for method, shapes in routes_by_method.items():
        for shape, counts in shapes.items():
            lines.append(f"  {method:16s} {shape:>10s}: " + ", ".join(f"{r} ×{n}" for r, n in counts.items()))
    return lines


# -- main ---------------------------------------------------------------------------------------

def schedule(configs: Sequence[tuple[str, str]], repeat: int) -> list[tuple[int, str, str]]:
    """(repetition, impl, method): every configuration once per repetition, the order reversed
    on every other one, so that neither side always runs first on a drifting machine."""
    out = []
    for rep in range(repeat):
        order = list(configs) if rep % 2 == 0 else list(configs)[::-1]
        out += [(rep, impl, method) for impl, method in order]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    use_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=12, help="ViT-B/32 residual blocks (12: the whole tower)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS), help="'' for Isoscope alone")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gb", type=float, default=8.0, help="RSS above which a process is killed")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    parser.add_argument("--peers-dir", type=Path, default=None, help="peer venvs (default $ISOSCOPE_CACHE/peers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    methods = [m for m in args.methods.split(",") if m]
    chosen = [p for p in PEERS if p.name in args.peers.split(",")]
    pythons: dict[str, Path] = {ISOSCOPE: Path(sys.executable)}
    peers = []
    for peer in chosen:
        python, why = ensure_venv(peer, args.peers_dir or peers_root())
        if python is None:
            print(f"{peer.label} skipped: it could not be installed ({why})")
            continue
        pythons[peer.name] = python
        peers.append(peer)
    folder = write_workload(workload_dir(args.blocks, args.tasks), args.blocks, args.tasks)
    print(f"ViT-B/32 visual tower, {args.blocks} blocks, T = {args.tasks}, float32, {args.threads} threads, "
          f"{args.repeat} runs each (median), RSS limit {args.max_gb:g} GB; THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE')}", flush=True)
    configs = [(ISOSCOPE, m) for m in methods] + [(p.name, m) for p in peers for m in methods if m in p.methods]
    runs: dict[tuple[str, str], list[Run]] = {}
    diffs: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="isoscope-peers-") as tmp:
        pre = load_file(str(folder / "pre.safetensors"))
        for rep, impl, method in schedule(configs, args.repeat):
            out = Path(tmp) / f"{impl}-{method}.safetensors"
            got = run_one(pythons[impl], impl, method, folder, out, args.max_gb, args.threads, args.timeout)
            runs.setdefault((impl, method), []).append(got)
            print(f"  run {rep + 1}: {impl:12s} {method:16s} {cell(got)}", flush=True)
        for impl, method in configs:
            ours, theirs = Path(tmp) / f"{ISOSCOPE}-{method}.safetensors", Path(tmp) / f"{impl}-{method}.safetensors"
            if impl != ISOSCOPE and ours.exists() and theirs.exists():
                diffs[(impl, method)] = relative_difference(pre, load_file(str(ours)), load_file(str(theirs)))
    results = {key: median_run(value) for key, value in runs.items()}
    print()
    print("\n".join(table(results, diffs, peers, methods)))
    print("\nRoutes Isoscope's engine took, per layer shape (calls summed over the tasks and layers):")
    print("\n".join(route_lines({m: results[(ISOSCOPE, m)].routes for m in methods if (ISOSCOPE, m) in results})))


if __name__ == "__main__":
    main()
