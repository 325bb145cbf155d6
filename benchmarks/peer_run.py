"""One merge in its own process, for ``benchmarks.peers``: Isoscope's or a peer library's.

    PYTHON benchmarks/peer_run.py --impl IMPL --method METHOD --dir WORKLOAD --out MERGED.safetensors

Runs under the project's venv (``isoscope``) or a peer's own venv (``fusion_bench``, ``mergekit``),
so it imports nothing of the project at the top: only the standard library, torch and safetensors.
It loads θ0 and the T fine-tuned state dicts (``pre.safetensors``, ``ft0.safetensors`` …) into
memory, times the merge call alone (state dicts in, merged state dict out, α = 1 or the
method's fixed 1/T), writes the merged θ, and prints one JSON line: seconds, the process's peak
RSS (VmHWM, loading included) and the linear-algebra routes Isoscope's engine took.

Every adapter calls the library's own public merge function for the method, on the same state
dicts; where a library has no such method, ``--impl`` fails with exit status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
State = dict[str, torch.Tensor]
# Isoscope's parameters for each method; the peers are called with the same values.
PARAMS = {"ties": {"top_k": 20.0}, "iso_cts": {"common_fraction": 0.8}}
UNSUPPORTED = 3


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


# -- Isoscope ---------------------------------------------------------------------------------

def isoscope(method: str, pre: State, fts: list[State]) -> tuple[State, dict]:
    sys.path.insert(0, str(ROOT))
    from merging import routes
    from merging.merge import Merger

    with routes.recording() as taken:
        merged = Merger(pre, fts, device="cpu").merged(method, PARAMS.get(method), alpha=1.0)
    return merged, taken.summary()


# -- FusionBench ------------------------------------------------------------------------------

def _fb_task_vectors(pre: State, fts: list[State]) -> list[State]:
    from fusion_bench.utils.state_dict_arithmetic import state_dict_sub

    return [state_dict_sub(ft, pre) for ft in fts]


def fusion_bench(method: str, pre: State, fts: list[State]) -> tuple[State, dict]:
    if method not in FB_METHODS:
        raise NotImplementedError(method)
    with torch.no_grad():
        return FB_METHODS[method](pre, fts), {}


def _fb_task_arithmetic(pre: State, fts: list[State], scale: float) -> State:
    """``task_arithmetic_merge``'s arithmetic on state dicts: Σ (θt − θ0), scaled, added to θ0."""
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sub

    total = None
    for ft in fts:
        tv = state_dict_sub(ft, pre)
        total = tv if total is None else state_dict_add(total, tv)
    return state_dict_add(pre, state_dict_mul(total, scale))


def _fb_ties(pre: State, fts: list[State]) -> State:
    """``TiesMergingAlgorithm.run``'s merging step on state dicts (flat vectors, disjoint mean)."""
    from fusion_bench.method.ties_merging.ties_merging_utils import state_dict_to_vector, ties_merging, vector_to_state_dict

    flat_ft = torch.vstack([state_dict_to_vector(ft, []) for ft in fts])  # (T, N)
    flat_ptm = state_dict_to_vector(pre, [])  # (N,)
    merged_tv = ties_merging(flat_ft - flat_ptm, reset_thresh=PARAMS["ties"]["top_k"], merge_func="mean")
    return dict(vector_to_state_dict(flat_ptm + merged_tv, pre, remove_keys=[]))


def _fb_tsv_m(pre: State, fts: list[State]) -> State:
    from fusion_bench.method.task_singular_vector.utils import TSVM_utils

    tvs = _fb_task_vectors(pre, fts)
    delta = TSVM_utils.compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu")
    return {k: pre[k] + delta[k] for k in pre}


def _fb_iso(pre: State, fts: list[State], common: bool) -> State:
    from fusion_bench.method.isotropic_merging import iso_utils

    tvs = _fb_task_vectors(pre, fts)
    if common:
        delta = iso_utils.iso_c(tvs, accelerator="cpu")
    else:
        delta = iso_utils.iso_cts(tvs, common_space_fraction=PARAMS["iso_cts"]["common_fraction"], accelerator="cpu")
    return {k: pre[k] + delta[k] for k in pre}


FB_METHODS: dict[str, Callable[[State, list[State]], State]] = {
    "task_arithmetic": lambda pre, fts: _fb_task_arithmetic(pre, fts, 1.0),
    "weight_averaging": lambda pre, fts: _fb_task_arithmetic(pre, fts, 1.0 / len(fts)),
    "ties": _fb_ties,
    "tsv_m": _fb_tsv_m,
    "iso_c": lambda pre, fts: _fb_iso(pre, fts, True),
    "iso_cts": lambda pre, fts: _fb_iso(pre, fts, False),
}


# -- mergekit ---------------------------------------------------------------------------------

# mergekit's method and parameters for each of ours (its in-memory API, ``merge_state_dicts``):
# weight averaging is its uniform ``linear`` merge of the fine-tuned models alone.
MK_METHODS: dict[str, tuple[str, dict, bool]] = {  # (mergekit method, parameters, with the base)
    "task_arithmetic": ("task_arithmetic", {"weight": 1.0}, True),
    "weight_averaging": ("linear", {"weight": 1.0}, False),
    "ties": ("ties", {"weight": 1.0, "density": PARAMS["ties"]["top_k"] / 100.0}, True),
}


def mergekit(method: str, pre: State, fts: list[State]) -> tuple[State, dict]:
    from mergekit.merge_methods.api import merge_state_dicts

    if method not in MK_METHODS:
        raise NotImplementedError(method)
    name, params, with_base = MK_METHODS[method]
    models = {**({"base": pre} if with_base else {}), **{f"t{t}": ft for t, ft in enumerate(fts)}}
    with torch.no_grad():
        return merge_state_dicts(models, name, parameters=params, base="base" if with_base else None), {}


IMPLS: dict[str, Callable[[str, State, list[State]], tuple[State, dict]]] = {
    "isoscope": isoscope, "fusion_bench": fusion_bench, "mergekit": mergekit}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", required=True, choices=sorted(IMPLS))
    parser.add_argument("--method", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loading = time.perf_counter()
    pre = load_file(str(args.dir / "pre.safetensors"))
    fts = [load_file(str(p)) for p in sorted(args.dir.glob("ft*.safetensors"), key=lambda p: int(p.stem[2:]))]
    start = time.perf_counter()
    loading = start - loading
    try:
        merged, routes = IMPLS[args.impl](args.method, pre, fts)
    except (NotImplementedError, KeyError) as err:
        print(json.dumps({"unsupported": f"{args.impl} has no {args.method}: {err}"}))
        return UNSUPPORTED
    seconds = time.perf_counter() - start
    save_file({k: v.contiguous() for k, v in merged.items()}, str(args.out))
    print(json.dumps({"seconds": seconds, "load_seconds": loading, "peak_rss_gb": peak_rss_gb(), "routes": routes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
