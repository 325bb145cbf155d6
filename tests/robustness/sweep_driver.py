"""Subprocess driver for the crash and shared-use tests: an Iso-CTS common-fraction sweep with α
chosen on validation at every point, on the synthetic zoo of tests/analysis, into the result store
at argv[1]. Prints "put" after every committed store write and, at the end, one JSON line with
the evaluations it ran, its slowest store write and the sweep table (for comparison).

    python -m tests.robustness.sweep_driver STORE [EVAL_DELAY_S]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.sweeps import fraction_sweep
from tests.analysis.synthetic import SyntheticZoo

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


class TimedStore(ResultStore):
    """A ResultStore that reports each committed write and remembers the slowest one."""

    slowest = 0.0

    def put(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().put(*args, **kwargs)
        self.slowest = max(self.slowest, time.perf_counter() - start)
        print("put", flush=True)


def run(store_path: str, delay: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    store = TimedStore(store_path)
    ev = Evaluator(SyntheticZoo(num_tasks=3, seed=0, delay=delay), store=store, device="cpu")
    table = fraction_sweep(ev, FRACTIONS)
    table = table.sort_values(["value", "split", "task"])
    return {"evaluations": ev.evaluations, "slowest_put_s": store.slowest,
            "accuracy": [round(float(a), 12) for a in table["accuracy"]],
            "alpha": [float(a) for a in table["alpha"]]}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)), flush=True)
