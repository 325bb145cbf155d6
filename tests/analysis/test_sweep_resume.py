"""A sweep killed with SIGKILL resumes from the store: no row lost or corrupted, none recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.sweeps import fraction_sweep
from tests.analysis.synthetic import SyntheticZoo

ROOT = Path(__file__).resolve().parents[2]
VALUES = [0.0, 0.25, 0.5, 0.75, 1.0]
TOTAL_ROWS = 4 * 3 + len(VALUES) * 2 * 3  # references (zero-shot, fine-tuned × val, test) + points

SWEEP = textwrap.dedent(f"""
    import sys, torch
    torch.set_num_threads(1)
    from analysis.evaluation import Evaluator
    from analysis.store import ResultStore
    from analysis.sweeps import fraction_sweep
    from tests.analysis.synthetic import SyntheticZoo
    ev = Evaluator(SyntheticZoo(delay=0.05), store=ResultStore(sys.argv[1]))
    fraction_sweep(ev, {VALUES!r}, alpha=1.0)
""")


def _sweep(store: ResultStore) -> tuple[pd.DataFrame, SyntheticZoo]:
    zoo = SyntheticZoo()
    return fraction_sweep(Evaluator(zoo, store=store), VALUES, alpha=1.0), zoo


def test_killed_sweep_resumes_where_it_stopped(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", SWEEP, str(store.path)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 120
    while store.count() < 18 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store.count()
    assert 18 <= before < TOTAL_ROWS and store.integrity_ok()

    table, zoo = _sweep(store)
    assert len(zoo.calls) == TOTAL_ROWS - before  # only the missing rows were evaluated
    assert store.count() == TOTAL_ROWS and store.integrity_ok()

    fresh, _ = _sweep(ResultStore(tmp_path / "fresh.sqlite"))
    pd.testing.assert_frame_equal(table, fresh)  # resumed rows equal an uninterrupted run
