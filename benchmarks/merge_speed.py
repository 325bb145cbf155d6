"""Merge-engine speed and memory against the plain reference (docs/design.md, Targets).

    flock /tmp/isoscope-cpu.lock .venv/bin/python -m benchmarks.merge_speed            # full
    flock /tmp/isoscope-cpu.lock .venv/bin/python -m benchmarks.merge_speed --quick    # 2 blocks, small stream

Workload: synthetic task vectors with the 2-D shapes of open_clip ViT-B-32's visual tower
(12 blocks × in_proj 2304×768, out_proj 768×768, c_fc 3072×768, c_proj 768×3072, plus
proj 768×512 and positional_embedding 50×768), T = 8, float32, fixed seed, 2 threads; each
task matrix has random orthogonal factors and σi = 0.01·0.99^i.

Reported: per method the reference time (the plain formulation of docs/design.md, Methods, full float32 SVDs,
tests/merging/reference.py; LAPACK failures are counted, not fatal), the engine time (the
per-layer method functions of merging/methods, each key on a fresh cache dropped after it,
exactly what the streaming `python -m merging merge` runs), both timed key by key in
alternation (best of --repeat calls each), the speedup, the max relative Frobenius difference
per matrix (where the engine and the float32 reference differ by more than 1e-3, a float64
reference of that matrix says which side is wrong and the engine is measured against it: a
float32 LAPACK SVD can return inaccurate factors on wide residuals without raising), and the
peak RSS of each side; the cost of an 11-point Iso-CTS common-fraction sweep (shared cache) as a ratio to one
merge; the low-rank-plus-flat-noise case; and a streaming `python -m merging merge` of T = 20
ViT-L/14-shaped float16 checkpoint files written to a temporary folder, with its peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from merging import routes
from merging.methods.common import Layer, LayerCache
from merging.registry import get_method
from merging.runtime import HUGE_PAGES_ENV, use_huge_pages
from tests.merging import reference

ROOT = Path(__file__).resolve().parents[1]
VIT_B32_BLOCK = [("attn.in_proj_weight", (2304, 768)), ("attn.out_proj.weight", (768, 768)),
                 ("mlp.c_fc.weight", (3072, 768)), ("mlp.c_proj.weight", (768, 3072))]
REFERENCE: dict[str, tuple[Callable[..., torch.Tensor], dict]] = {
    "tsv_m": (reference.tsv_m_matrix, {}),
    "iso_c": (reference.iso_c_matrix, {}),
    "iso_cts": (reference.iso_cts_matrix, {"common_fraction": 0.8}),
}
SWEEP = [round(0.1 * i, 1) for i in range(11)]

log = logging.getLogger("benchmarks.merge_speed")


# -- memory -------------------------------------------------------------------------------------

def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# -- workload -----------------------------------------------------------------------------------

def shapes(blocks: int) -> list[tuple[str, tuple[int, int]]]:
    out = [("positional_embedding", (50, 768))]
    for b in range(blocks):
        out += [(f"transformer.resblocks.{b}.{name}", shape) for name, shape in VIT_B32_BLOCK]
    return out + [("proj", (768, 512))]


def _orthonormal(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=gen))
    return q  # (n, r)


def smooth_task_matrix(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random orthogonal factors, σi = 0.01·0.99^i (the regime of real task vectors)."""
    r = min(m, n)
    sigma = 0.01 * 0.99 ** torch.arange(r, dtype=torch.float32)
    return (_orthonormal(m, r, gen) * sigma) @ _orthonormal(n, r, gen).T


def noisy_low_rank_matrix(m: int, n: int, gen: torch.Generator, rank: int = 32) -> torch.Tensor:
    """A rank-32 signal plus a flat noise floor: the Iso-CTS boundary falls in the noise."""
    signal = (_orthonormal(m, rank, gen) * (0.01 * torch.rand(rank, generator=gen) + 0.005)) @ _orthonormal(n, rank, gen).T
    return signal + 2e-5 * torch.randn(m, n, generator=gen)


def workload(blocks: int, tasks: int, make: Callable[..., torch.Tensor], seed: int = 0) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {key: [make(m, n, gen) for _ in range(tasks)] for key, (m, n) in shapes(blocks)}


# -- runs ---------------------------------------------------------------------------------------

def reference_key(name: str, key: str, taus: list[torch.Tensor]) -> torch.Tensor | None:
    """The plain reference on one key; None where LAPACK fails (counted, not fatal)."""
    fn, params = REFERENCE[name]
    try:
        return fn(taus, **params)
    except RuntimeError as err:  # torch.linalg.LinAlgError: SVD did not converge
        log.warning("reference %s failed on %s %s: %s", name, key, tuple(taus[0].shape), err)
        return None


def engine_key(name: str, key: str, taus: list[torch.Tensor], cache: LayerCache | None = None,
               params: dict | None = None) -> torch.Tensor:
    """The engine's per-layer method function on one key; a fresh cache unless one is given."""
    spec = get_method(name)
    with routes.layer(taus[0].shape):
        return spec.fn(Layer(key=key, taus=taus, matrix=True, cache=LayerCache() if cache is None else cache),
                       spec.resolve(params))


def route_lines(name: str, summary: dict[str, dict[str, int]]) -> list[str]:
    """One line per layer shape: the routes ``name`` took there and how often."""
    return [f"  {name:9s} {shape:>10s}: " + ", ".join(f"{route} ×{n}" for route, n in counts.items())
            for shape, counts in summary.items()]


def run_reference(name: str, data: dict[str, list[torch.Tensor]]) -> tuple[dict[str, torch.Tensor | None], float, int]:
    start = time.perf_counter()
    out = {key: reference_key(name, key, taus) for key, taus in data.items()}
    return out, time.perf_counter() - start, sum(v is None for v in out.values())


def run_engine(name: str, data: dict[str, list[torch.Tensor]], caches: dict[str, LayerCache] | None = None,
               params: dict | None = None, keep: bool = True) -> tuple[dict[str, torch.Tensor], float]:
    """One merge by the per-layer method functions. Without ``caches``, each key gets a fresh
    cache that is dropped after it, as in the streaming CLI merge; a sweep passes one shared
    ``caches`` dict, as ``Merger`` keeps. ``keep=False`` drops each output, as streaming does."""
    out = {}
    start = time.perf_counter()
    for key, taus in data.items():
        delta = engine_key(name, key, taus, None if caches is None else caches.setdefault(key, LayerCache()), params)
        if keep:
            out[key] = delta
    return out, time.perf_counter() - start


def timed(fn: Callable[[], object], repeat: int) -> tuple[object, float, float]:
    """(last result, best wall s of ``repeat`` calls, peak RSS GB during them)."""
    best, result, rss = float("inf"), None, 0.0
    for _ in range(repeat):
        result = None  # drop the previous result before the next call allocates its own
        reset_peak_rss()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        rss = max(rss, peak_rss_gb())
    return result, best, rss


def interleaved(name: str, data: dict[str, list[torch.Tensor]], repeat: int, with_reference: bool = True) -> dict:
    """Reference and engine alternately, key by key (in alternating order), so that both see the
    same machine state (this shared 2-core machine drifts by ±15% over tens of seconds); each
    key's time is the best of ``repeat`` calls. Each key's outputs are compared at once and
    dropped, as a streaming merge drops them (keeping them all would charge both sides for
    page faults of a growing heap). Returns seconds and peak RSS GB per side, the max relative
    difference (against a float64 reference where the float32 one is off, see ``arbitrate``),
    the reference's failures and the arbitration notes."""
    sides = ("ref", "eng") if with_reference else ("eng",)
    runs = {"ref": lambda key, taus: reference_key(name, key, taus),
            "eng": lambda key, taus: engine_key(name, key, taus)}
    seconds, rss = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0.0)
    diff, fails, notes = 0.0, 0, []
    for i, (key, taus) in enumerate(data.items()):
        out = {}
        for side in sides if i % 2 == 0 else sides[::-1]:  # neither always goes first
            out[side], best, peak = timed(lambda: runs[side](key, taus), repeat)
            seconds[side], rss[side] = seconds[side] + best, max(rss[side], peak)
        if with_reference:
            fails += out["ref"] is None
            key_diff, note = arbitrate(name, key, taus, out["eng"], out["ref"])
            diff = max(diff, key_diff)
            notes += [note] if note else []
    nan = float("nan")
    return {"ref_s": seconds.get("ref", nan), "eng_s": seconds["eng"], "ref_rss": rss.get("ref", nan),
            "eng_rss": rss["eng"], "diff": diff if with_reference else nan, "fails": fails, "notes": notes}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor | None]) -> float:
    return max((rel_diff(a[k], ref) for k, ref in b.items() if ref is not None), default=0.0)


def arbitrate(name: str, key: str, taus: list[torch.Tensor], eng: torch.Tensor, r32: torch.Tensor | None,
              threshold: float = 1e-3) -> tuple[float, str | None]:
    """(engine's relative difference, note): against the float32 reference where the two agree
    within ``threshold``; otherwise (or where the reference failed) a float64 reference of the
    matrix says which one is right, and the engine is measured against it."""
    if r32 is not None and (diff := rel_diff(eng, r32)) <= threshold:
        return diff, None
    fn, params = REFERENCE[name]
    r64 = fn([t.double() for t in taus], **params)
    ref_note = "failed" if r32 is None else f"{rel_diff(r32, r64):.1e}"
    diff = rel_diff(eng, r64)
    return diff, (f"  {name} {key} {tuple(taus[0].shape)}: vs a float64 reference, engine {diff:.1e}, "
                  f"float32 reference {ref_note}")


def compare(data: dict[str, list[torch.Tensor]], methods: Sequence[str], with_reference: bool,
            repeat: int = 1) -> list[tuple]:
    rows, all_notes, taken = [], [], []
    for name in methods:
        with routes.recording() as log_:
            got = interleaved(name, data, repeat, with_reference)
        taken += route_lines(name, log_.summary())
        rows.append((name, got["ref_s"], got["eng_s"], got["ref_s"] / got["eng_s"], got["diff"], got["fails"],
                     got["ref_rss"], got["eng_rss"]))
        print_row(rows[-1])
        all_notes.extend(got["notes"])
    for line in all_notes:
        print(line)
    print("Routes the engine took per layer shape (calls, summed over tasks, layers and repeats):")
    print("\n".join(taken))
    return rows


HEADER = (f"| {'method':9s} | {'reference s':>11s} | {'engine s':>8s} | {'speedup':>7s} | {'max rel diff':>12s} "
          f"| {'ref failures':>12s} | {'ref peak RSS GB':>15s} | {'engine peak RSS GB':>18s} |")


def print_row(row: tuple) -> None:
    name, ref_s, eng_s, speedup, diff, fails, ref_rss, eng_rss = row
    print(f"| {name:9s} | {ref_s:11.2f} | {eng_s:8.2f} | {speedup:6.1f}× | {diff:12.1e} | {fails:12d} "
          f"| {ref_rss:15.2f} | {eng_rss:18.2f} |", flush=True)


def sweep(data: dict[str, list[torch.Tensor]]) -> tuple[float, float, list[float]]:
    """(one fresh Iso-CTS merge s, 11-fraction sweep on one shared cache s, s per fraction)."""
    _, one = run_engine("iso_cts", data, keep=False)
    caches: dict[str, LayerCache] = {}
    start = time.perf_counter()
    points = [run_engine("iso_cts", data, caches, {"common_fraction": f}, keep=False)[1] for f in SWEEP]
    return one, time.perf_counter() - start, points


# -- streaming ----------------------------------------------------------------------------------

def visual_tower_spec(width: int, layers: int, patch: int, grid: int, out: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of an open_clip visual tower (ViT-B/32: 768, 12, 32, 7, 512;
    ViT-L/14: 1024, 24, 14, 16, 768)."""
    spec: list[tuple[str, tuple[int, ...]]] = [
        ("conv1.weight", (width, 3, patch, patch)), ("class_embedding", (width,)),
        ("positional_embedding", (grid * grid + 1, width)), ("ln_pre.weight", (width,)), ("ln_pre.bias", (width,))]
    for b in range(layers):
        p = f"transformer.resblocks.{b}."
        spec += [(p + "ln_1.weight", (width,)), (p + "ln_1.bias", (width,)),
                 (p + "attn.in_proj_weight", (3 * width, width)), (p + "attn.in_proj_bias", (3 * width,)),
                 (p + "attn.out_proj.weight", (width, width)), (p + "attn.out_proj.bias", (width,)),
                 (p + "ln_2.weight", (width,)), (p + "ln_2.bias", (width,)),
                 (p + "mlp.c_fc.weight", (4 * width, width)), (p + "mlp.c_fc.bias", (4 * width,)),
                 (p + "mlp.c_proj.weight", (width, 4 * width)), (p + "mlp.c_proj.bias", (width,))]
    return spec + [("ln_post.weight", (width,)), ("ln_post.bias", (width,)), ("proj", (width, out))]


def vit_l14_state(gen: torch.Generator, base: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of an open_clip ViT-L/14 visual tower (304M parameters), random."""
    out = {}
    for key, shape in visual_tower_spec(width=1024, layers=24, patch=14, grid=16, out=768):
        noise = torch.randn(*shape, generator=gen)
        out[key] = ((0.02 * noise) if base is None else (base[key].float() + 1e-3 * noise)).to(dtype)
    return out


CHILD = ("import sys, pathlib; from merging.cli import main; rc = main(sys.argv[1:]); "
         "print([x for x in pathlib.Path('/proc/self/status').read_text().splitlines() "
         "if x.startswith('VmHWM')][0], file=sys.stderr); sys.exit(rc)")


def streaming(tasks: int, method: str, folder: Path, dtype: torch.dtype = torch.float16) -> tuple[float, float, float]:
    """(checkpoint size GB, merge wall s, peak RSS GB of the merging subprocess)."""
    gen = torch.Generator().manual_seed(0)
    pre = vit_l14_state(gen, None, dtype)
    save_file(pre, str(folder / "pre.safetensors"))
    size = sum(v.numel() * v.element_size() for v in pre.values()) / 2 ** 30
    fts = []
    for t in range(tasks):
        fts.append(folder / f"ft{t}.safetensors")
        save_file(vit_l14_state(gen, pre, dtype), str(fts[-1]))
    del pre
    out = folder / "merged.safetensors"
    # The child reports its own VmHWM: RUSAGE_CHILDREN would also count the pages it shared
    # with this (large) process between fork and exec.
    cmd = [sys.executable, "-c", CHILD, "merge", "--pretrained", str(folder / "pre.safetensors"),
           "--finetuned", *map(str, fts), "--method", method, "--device", "cpu", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"streaming merge failed: {done.stderr.strip()}")
    rss = float(done.stderr.strip().splitlines()[-1].split()[1]) / 2 ** 20
    return size, wall, rss


# -- the CLI end to end ---------------------------------------------------------------------------

def write_checkpoints(data: dict[str, list[torch.Tensor]], folder: Path, seed: int = 0) -> tuple[Path, list[Path]]:
    """θ0 (random) and θt = θ0 + τt as float32 safetensors files in ``folder``."""
    gen = torch.Generator().manual_seed(seed)
    pre = {key: 0.02 * torch.randn(*taus[0].shape, generator=gen) for key, taus in data.items()}
    save_file(pre, str(folder / "pre.safetensors"))
    fts = []
    for t in range(len(next(iter(data.values())))):
        fts.append(folder / f"ft{t}.safetensors")
        save_file({key: pre[key] + taus[t] for key, taus in data.items()}, str(fts[-1]))
    return folder / "pre.safetensors", fts


def cli_seconds(pre: Path, fts: list[Path], method: str, out: Path, huge_pages: str | None) -> float:
    """Wall seconds of ``python -m merging merge`` in a new process (start, reading and writing
    included); ``huge_pages`` forces THP_MEM_ALLOC_ENABLE, None lets the CLI decide."""
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    env.update({} if huge_pages is None else {HUGE_PAGES_ENV: huge_pages})
    cmd = [sys.executable, "-m", "merging", "merge", "--pretrained", str(pre), "--finetuned", *map(str, fts),
           "--method", method, "--device", "cpu", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"CLI merge failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def cli_end_to_end(blocks: int, tasks: int, repeat: int, method: str = "iso_cts") -> dict[str, float]:
    """Best-of-``repeat`` seconds of the plain reference in this process, the engine in this
    process, and the CLI end to end (huge pages as the CLI decides, and forced on), alternated."""
    data = workload(blocks, tasks, smooth_task_matrix)
    runs: dict[str, Callable[[], object]] = {
        "reference": lambda: run_reference(method, data),
        "engine": lambda: run_engine(method, data, keep=False),
    }
    with tempfile.TemporaryDirectory(prefix="isoscope-cli-") as tmp:
        pre, fts = write_checkpoints(data, Path(tmp))
        out = Path(tmp) / "merged.safetensors"
        runs["cli"] = lambda: cli_seconds(pre, fts, method, out, None)
        runs["cli, huge pages on"] = lambda: cli_seconds(pre, fts, method, out, "1")
        best = dict.fromkeys(runs, float("inf"))
        for rep in range(repeat):
            for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
                start = time.perf_counter()
                runs[name]()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def cli_lines(best: dict[str, float], blocks: int, tasks: int, method: str = "iso_cts") -> list[str]:
    """The reference's time over each side's: the in-process and the end-to-end ratios."""
    ref = best["reference"]
    lines = [f"{method} on {blocks} ViT-B/32 blocks, T = {tasks}: plain reference in-process {ref:.2f} s"]
    lines += [f"  {name:20s} {sec:6.2f} s = {ref / sec:.2f}× the reference" for name, sec in best.items()
              if name != "reference"]
    return lines


# -- main ---------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    use_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks and a T=3 stream: a smoke run")
    parser.add_argument("--blocks", type=int, default=None, help="ViT-B/32 blocks (default 12, quick 2)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--methods", default="iso_cts,iso_c,tsv_m")
    parser.add_argument("--no-reference", action="store_true", help="engine only")
    parser.add_argument("--skip-noise", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--stream-tasks", type=int, default=None, help="default 20 (quick 3)")
    parser.add_argument("--stream-method", default="iso_c")
    parser.add_argument("--stream-only", action="store_true", help="only the streaming run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-blocks", type=int, default=3, help="blocks of the CLI end-to-end run (0: skip it)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="time every key this many times (reference and engine alternately), keep the best")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    blocks = args.blocks if args.blocks is not None else (2 if args.quick else 12)
    methods = [m for m in args.methods.split(",") if m]
    if not args.stream_only:
        engine_speed(args, blocks, methods)
    if args.cli_blocks and not args.stream_only:
        print(f"\nThe CLI end to end (process start, reading and writing included; huge pages "
              f"{'asked for' if os.environ.get(HUGE_PAGES_ENV) == '1' else 'not asked for'} here):")
        print("\n".join(cli_lines(cli_end_to_end(args.cli_blocks, args.tasks, args.repeat), args.cli_blocks,
                                   args.tasks)))
    if not args.skip_stream:
        tasks = args.stream_tasks or (3 if args.quick else 20)
        with tempfile.TemporaryDirectory(prefix="isoscope-stream-") as tmp:
            size, wall, rss = streaming(tasks, args.stream_method, Path(tmp))
        print(f"\nStreaming `python -m merging merge --method {args.stream_method}` of {tasks} ViT-L/14-shaped "
              f"float16 files ({size:.2f} GB each, {tasks + 1} files): {wall:.1f} s, peak RSS {rss:.2f} GB "
              f"(= {rss / size:.1f} checkpoints; target ≤ 8 GB)")


def float64_check(data: dict[str, list[torch.Tensor]], name: str) -> tuple[float, float]:
    """(max rel diff engine vs float64 reference, float32 reference vs float64 reference)."""
    fn, params = REFERENCE[name]
    eng, _ = run_engine(name, data)
    ref32, _, _ = run_reference(name, data)
    ref64 = {k: fn([t.double() for t in taus], **params) for k, taus in data.items()}
    return max_rel_diff(eng, ref64), max_rel_diff({k: v for k, v in ref32.items() if v is not None}, ref64)


def engine_speed(args: argparse.Namespace, blocks: int, methods: Sequence[str]) -> None:
    print(f"ViT-B/32 visual 2-D shapes, {blocks} blocks, T={args.tasks}, float32, {args.threads} threads")
    start = time.perf_counter()
    data = workload(blocks, args.tasks, smooth_task_matrix)
    print(f"workload generated in {time.perf_counter() - start:.1f} s; peak RSS so far {peak_rss_gb():.2f} GB\n")
    print(HEADER)
    print("|" + "|".join("---" for _ in HEADER.strip(" |").split("|")) + "|")
    compare(data, methods, not args.no_reference, args.repeat)
    if not args.skip_sweep:
        one, swept, points = sweep(data)
        print(f"\nIso-CTS sweep over 11 common fractions (0.0…1.0, shared cache): {swept:.2f} s = "
              f"{swept / one:.2f}× one merge ({one:.2f} s); per fraction: "
              + ", ".join(f"{f:.1f}: {sec:.1f} s" for f, sec in zip(SWEEP, points)))
    del data
    if not args.skip_noise:
        noisy = workload(min(blocks, 2), args.tasks, noisy_low_rank_matrix, seed=1)
        print(f"\nLow-rank-plus-flat-noise task matrices ({min(blocks, 2)} blocks; the Iso-CTS boundary "
              "falls in the noise floor, so float32 implementations legitimately differ):")
        print(HEADER)
        compare(noisy, ["iso_cts"], not args.no_reference, args.repeat)
        eng64, ref64 = float64_check(noisy, "iso_cts")
        print(f"against a float64 reference: engine max rel diff {eng64:.1e}, float32 reference {ref64:.1e}")
        del noisy


if __name__ == "__main__":
    main()
