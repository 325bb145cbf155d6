"""Crash safety and shared use of the analysis result store (analysis/store.py), end to end:
a real sweep in a subprocess (tests/robustness/sweep_driver.py) is SIGKILLed at random moments,
then resumed; two sweeps share one store at once while this process reads it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from analysis.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]
DELAY = 0.01  # seconds per task evaluation in the synthetic zoo: the sweep runs ~2 s
KILL_SEED = 6
pytestmark = pytest.mark.slow


def start_sweep(store: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tests.robustness.sweep_driver", str(store), str(DELAY)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def kill_after(proc: subprocess.Popen, puts: int, extra_s: float) -> int:
    """SIGKILL ``proc`` ``extra_s`` seconds after its ``puts``-th committed write; return writes seen."""
    seen = 0
    while seen < puts and proc.stdout.readline() == "put\n":
        seen += 1
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return seen


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, int]:
    """The uninterrupted sweep: its result and how many rows it stores."""
    store = tmp_path_factory.mktemp("clean") / "results.sqlite"
    result = finish(start_sweep(store))
    return result, ResultStore(store).count()


def test_sweep_killed_at_random_moments_resumes_without_loss_or_rework(tmp_path: Path,
                                                                      clean_run: tuple[dict, int]) -> None:
    clean, total_rows = clean_run
    assert clean["evaluations"] == total_rows > 50
    store_path = tmp_path / "results.sqlite"
    rng = random.Random(KILL_SEED)
    counts = [0]
    for _ in range(4):  # four kill points, each at a random write plus a random fraction of a write
        seen = kill_after(start_sweep(store_path), rng.randint(1, 6), rng.uniform(0.0, 0.05))
        store = ResultStore(store_path)
        assert store.integrity_ok()
        counts.append(store.count())
        assert counts[-1] >= counts[-2] + 3 * seen  # every write reported as done is there (3 tasks each)
        assert len({r[:6] for r in store.rows()}) == counts[-1]  # no duplicate keys
    assert counts[-1] < total_rows, "the kills came too late to test anything"
    resumed = finish(start_sweep(store_path))
    assert resumed["evaluations"] == total_rows - counts[-1]  # only the missing points were computed
    assert ResultStore(store_path).count() == total_rows and ResultStore(store_path).integrity_ok()
    assert resumed["accuracy"] == clean["accuracy"] and resumed["alpha"] == clean["alpha"]


def test_two_sweeps_share_one_store_while_it_is_read(tmp_path: Path, clean_run: tuple[dict, int]) -> None:
    clean, total_rows = clean_run
    store = ResultStore(tmp_path / "results.sqlite")
    slowest_read, errors, done = [0.0], [], threading.Event()

    def reader() -> None:
        last = 0
        while not done.is_set():
            start = time.perf_counter()
            try:
                count = store.count()
                store.rows()
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return
            slowest_read[0] = max(slowest_read[0], time.perf_counter() - start)
            if count < last:
                errors.append(AssertionError(f"rows went from {last} to {count}"))
            last = count
            time.sleep(0.005)

    thread = threading.Thread(target=reader)
    thread.start()
    procs = [start_sweep(store.path) for _ in range(2)]
    results = [finish(p) for p in procs]
    done.set()
    thread.join()
    assert errors == []
    assert store.count() == total_rows and store.integrity_ok()
    assert all(r["accuracy"] == clean["accuracy"] for r in results)
    done_by = [r["evaluations"] for r in results]
    assert all(n > 0 for n in done_by), done_by  # both sweeps really wrote to the shared store
    assert sum(done_by) >= total_rows  # together they cover every row; overlap is allowed
    assert max(r["slowest_put_s"] for r in results) < 2.0 and slowest_read[0] < 2.0  # nobody blocked long
