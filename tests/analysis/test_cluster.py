"""Sweeps and the report on a real multi-node Ray cluster (a head without CPUs and two 1-CPU
nodes on this machine, ``ray.cluster_utils.Cluster``): the stored rows equal an in-process run's
bit for bit, each point is stored once, a node killed mid-sweep changes nothing, and the CLI
turns an unreachable address or a zoo a worker cannot open into one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cluster import (MB, Cluster, NotStored, ZooInfo, ZooSpec, local_cluster, report_units,
                              stored_evaluator, sweep, sweep_units)
from analysis.evaluation import Evaluator
from analysis.report import build_report
from analysis.store import MemoryStore, ResultStore
from analysis.sweeps import param_sweep
from merging.registry import all_methods
from zoo import load_zoo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {"iso_cts": ("common_fraction", [0.0, 0.5, 1.0]), "cart": ("rank_ratio", [0.1, 0.5])}
SPEC = ZooSpec("digits-tiny", threads=1)  # one thread on both sides, as the workers have one CPU


def _points(store: ResultStore) -> list[tuple]:
    """Every stored point row without its timestamp, sorted."""
    return sorted(row[:-1] for row in store.rows())


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
    return store, build_report(ev).results


@pytest.fixture(scope="module")
def ray_cluster(reference: tuple) -> Iterator[object]:
    with local_cluster(nodes=2) as cluster:  # after the reference: digits-tiny is in the shared cache
        yield cluster


def test_cluster_rows_equal_the_in_process_rows(ray_cluster: object, reference: tuple, tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "cluster.sqlite")
    with Cluster(ray_cluster.address, SPEC) as cluster:
        assert len(cluster._slots) == 2 and cluster.resources().nodes == 3
        assert {s.node for s in cluster._slots} and cluster.info.fingerprint == load_zoo("digits-tiny").fingerprint
        for method, (param, values) in SWEEPS.items():
            sweep(cluster, store, method, param, values)
        ran = cluster.run(report_units(cluster.info.matrix_keys, list(all_methods())), store)
        assert ran > 0
        again = cluster.run(sweep_units("iso_cts", *SWEEPS["iso_cts"]), store)  # all stored: nothing submitted
        results = build_report(cluster.stored(store)).results
    assert again == 0
    want, reference_results = reference
    assert _points(store) == _points(want)  # same keys (so the same α chosen), same accuracies, once each
    assert len(_points(store)) == len(set(r[:6] for r in _points(store)))
    layers, wanted = _layers(store), _layers(want)
    assert set(wanted) <= set(layers)
    for name, arrays in wanted.items():
        assert all(np.array_equal(arrays[k], layers[name][k]) for k in arrays), name
    assert results == reference_results


def test_a_node_killed_mid_sweep_changes_nothing(ray_cluster: object, reference: tuple, tmp_path: Path) -> None:
    store, killed = ResultStore(tmp_path / "killed.sqlite"), []
    nodes = list(ray_cluster.worker_nodes)
    method, (param, values) = "iso_cts", SWEEPS["iso_cts"]

    def kill_after_first(fraction: float, message: str) -> None:
        if 0 < fraction < 1 and not killed:
            killed.append(nodes[0])
            ray_cluster.remove_node(nodes[0], allow_graceful=False)

    try:
        with Cluster(ray_cluster.address, SPEC) as cluster:
            table = sweep(cluster, store, method, param, values, progress=kill_after_first)
    finally:
        if killed:  # the cluster is whole again for the other tests
            ray_cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    assert killed and sorted(set(table["value"])) == values
    want = [r for r in _points(reference[0]) if r[1] == method or r[1] in ("zero_shot", "finetuned")]
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
