"""Sweeps and the report on a real multi-node Ray cluster (a head without CPUs and two 1-CPU
nodes on this machine, ``ray.cluster_utils.Cluster``): the stored rows equal an in-process run's
bit for bit, each point is stored once, a node killed mid-sweep changes nothing, and the CLI
turns an unreachable address or a zoo a worker cannot open into one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cluster import (MB, Cluster, NotStored, ZooInfo, ZooSpec, report_units, stored_evaluator, sweep,
                              sweep_units)
from analysis.evaluation import Evaluator
from analysis.report import build_report
from analysis.store import MemoryStore, ResultStore, canonical_params
from analysis.sweeps import param_sweep
from zoo import load_zoo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {"iso_cts": ("common_fraction", [0.0, 0.5, 1.0]), "cart": ("rank_ratio", [0.1, 0.5])}
REPORT = ["task_arithmetic", "iso_c", "iso_cts", "cart"]  # the report's methods (a subset: time)
SPEC = ZooSpec("digits-tiny", threads=1)  # one thread on both sides, as the workers have one CPU


def _points(store: ResultStore) -> list[tuple]:
    """Every stored point row without its timestamp (``rows()``'s eighth column), sorted."""
    return sorted(row[:7] + row[8:] for row in store.rows())


def _layers(store: ResultStore) -> dict[tuple, dict[str, np.ndarray]]:
    with store._connect() as con:
        names = con.execute("SELECT fingerprint, kind, key, method, params FROM layers").fetchall()
    return {tuple(n): store.get_layer(*n) for n in names}


@pytest.fixture(scope="module")
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(SPEC.threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, threads: None) -> tuple[ResultStore, dict]:
    """Both sweeps and the report in-process (this also builds digits-tiny into the shared cache)."""
    store = ResultStore(tmp_path_factory.mktemp("inprocess") / "results.sqlite")
    ev = Evaluator(SPEC.open(), store=store)
    for method, (param, values) in SWEEPS.items():
        param_sweep(ev, method, param, values)
    return store, build_report(ev, REPORT).results


def test_cluster_rows_equal_the_in_process_rows(ray_cluster: object, reference: tuple, tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "cluster.sqlite")
    with Cluster(ray_cluster.address, SPEC) as cluster:
        assert cluster.workers_alive == 2 and cluster.resources().nodes == 3
        assert cluster.info.fingerprint == load_zoo("digits-tiny").fingerprint
        for method, (param, values) in SWEEPS.items():
            sweep(cluster, store, method, param, values)
        ran = cluster.run(report_units(cluster.info.matrix_keys, REPORT), store)
        assert ran > 0
        again = cluster.run(sweep_units("iso_cts", *SWEEPS["iso_cts"]), store)  # all stored: nothing submitted
        results = build_report(cluster.stored(store), REPORT).results
    assert again == 0
    want, reference_results = reference
    assert _points(store) == _points(want)  # same keys (so the same α chosen), same accuracies, once each
    assert len(_points(store)) == len(set(r[:6] for r in _points(store)))
    layers, wanted = _layers(store), _layers(want)
    assert {n for n in wanted if n[1] == "merged"} <= set(layers)  # every decomposition the report read
    common = set(wanted) & set(layers)  # (in-process, SAR read ‖Δt‖ alone; a layer unit stores the spectra)
    assert len(common) > len(REPORT) * len({n[2] for n in common})
    for name in common:  # equal up to rounding: a layer's float path depends on what its cache holds already
        for k, v in wanted[name].items():  # (whether the TA sum's SVD was taken first), not on the node
            np.testing.assert_allclose(layers[name][k], v, rtol=1e-5, atol=1e-5 * float(np.abs(v).max()),
                                       err_msg=str(name))  # float32 rounding, relative to the largest entry
    for name, entry in reference_results["methods"].items():  # accuracies and α bit for bit; SAR to rounding
        got = results["methods"][name]
        exact = ("alpha", "test_acc", "val_acc", "nai")  # compared as JSON text: NaN (no zero-shot gap) equals NaN
        assert json.dumps([got[k] for k in exact], sort_keys=True) == json.dumps([entry[k] for k in exact], sort_keys=True)
        assert got["sar_avg"] == pytest.approx(entry["sar_avg"], rel=1e-5)


def test_a_node_killed_mid_sweep_changes_nothing(ray_cluster: object, reference: tuple, tmp_path: Path) -> None:
    store, killed = ResultStore(tmp_path / "killed.sqlite"), []
    method, (param, values) = "iso_cts", SWEEPS["iso_cts"]

    def kill_the_next_node(fraction: float, message: str) -> None:
        """At the first completed unit, kill the node of the worker that finished it: that worker is
        idle, so the next unit goes to it and is lost with it. (Killing a busy worker instead races
        its unit: on a fast machine the unit can finish before the node is gone, and nothing is lost.)"""
        seen.append(fraction)
        idle = cluster.idle_nodes()
        if len(seen) == 2 and idle:  # 0, then 1/3
            node = next(n for n in ray_cluster.worker_nodes if n.node_id == idle[0])
            ray_cluster.remove_node(node, allow_graceful=False)
            killed.append(node)

    seen: list[float] = []
    try:
        with Cluster(ray_cluster.address, SPEC) as cluster:
            table = sweep(cluster, store, method, param, values, progress=kill_the_next_node)
            survivors, resubmitted = cluster.workers_alive, cluster.resubmitted
    finally:
        if killed:  # the cluster is whole again for the other tests
            ray_cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    assert killed and survivors == 1 and resubmitted == 1 and sorted(set(table["value"])) == values
    swept = {canonical_params({param: v}) for v in values}  # (the reference also holds the report's point)
    want = [r for r in _points(reference[0]) if r[1] == method and r[2] in swept or r[1] in ("zero_shot", "finetuned")]
    assert _points(store) == want


def test_stored_evaluator_computes_nothing(reference: tuple) -> None:
    store, _ = reference
    ev = Evaluator(SPEC.open(), store=MemoryStore())
    stored = stored_evaluator(ZooInfo.of(ev), store)
    table = param_sweep(stored, "iso_cts", *SWEEPS["iso_cts"])  # every row from the store
    assert stored.evaluations == 0 and len(table)
    with pytest.raises(NotStored):
        stored.accuracy("iso_cts", {"common_fraction": 0.3}, 1.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "analysis", "sweep", "--method", "iso_cts", "--param", "common_fraction=0:1:0.5",
           "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_cli_unreachable_address_is_one_line() -> None:
    done = _cli("--zoo", "digits-tiny", "--ray", "127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach a Ray cluster at 127.0.0.1:9") and "Traceback" not in done.stderr


def test_cli_zoo_a_worker_cannot_open_is_one_line(ray_cluster: object, tmp_path: Path) -> None:
    missing = tmp_path / "not-on-the-workers"
    done = _cli("--zoo", str(missing), "--ray", ray_cluster.address, "--store", str(tmp_path / "r.sqlite"))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot open zoo '{missing}' on node ") and "same on every node" in last
    assert "Traceback" not in done.stderr
