"""The tour's real-zoo evidence on digits-tiny: its numbers equal the Evaluator's and the
correlation's own, the common-fraction curve is Fig. 5's sweep, and the steps that quote it keep
every claim true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis import tour
from analysis.correlation import correlation
from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.tour_zoo import FIG3A_METHODS, METHODS, zoo_evidence
from merging.registry import get_method
from zoo import load_zoo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_zoo_evidence_on_digits_tiny(tmp_path: Path) -> None:
    ev = Evaluator(load_zoo("digits-tiny"), store=ResultStore(tmp_path / "store.sqlite"))
    found = zoo_evidence(ev, "digits-tiny", "figure", 0.95, curve=True)
    for m in METHODS:
        table, choice = ev.table(m, get_method(m).resolve(None))
        test = table[table["split"] == "test"]
        assert found.normalized[m] == pytest.approx(100 * test["normalized"].mean())
        assert found.alpha[m] == choice.alpha
        np.testing.assert_allclose(found.task_nai(m)[list(test["task"])], test["nai"])
    assert set(found.points["method"]) == set(FIG3A_METHODS) and len(found.points) == 2 * len(found.tasks)
    assert found.pearson == pytest.approx(correlation(found.points["sar_avg"], found.points["nai"])["pearson"])
    ta = found.points[found.points["method"] == "task_arithmetic"]
    assert found.pearson_ta == pytest.approx(correlation(ta["sar_avg"], ta["nai"])["pearson"])
    assert list(found.curve["fraction"]) == pytest.approx([round(0.1 * i, 1) for i in range(11)])
    assert ((found.curve["normalized"] > 0) & (found.curve["normalized"] < 200)).all()
    before = ev.evaluations
    again = zoo_evidence(ev, "digits-tiny", "figure", 0.95, curve=True)  # every accuracy from the store
    assert ev.evaluations == before and again.normalized == found.normalized
    for step in tour.tour(tour.TourState(), found):
        for claim in step.claims:
            assert claim.holds() and claim.text[1:] in step.text, (step.key, claim)
