"""The Learn tour's content: the paper's order, every generated claim true of its numbers at every
slider setting (a 5 × 5 grid of shared × weak, both k_M rules, with and without a zoo), claims
cross-checked against numbers computed here independently, short presenter leads, and exports that
carry the settings and the citation."""

from __future__ import annotations

import html
import itertools
import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import subspace_angles

from analysis import fig3a, toy, tour
from analysis.correlation import correlation
from analysis.tour_zoo import ZooEvidence

SHARED = (0.0, 0.25, 0.5, 0.75, 1.0)
WEAK = (0.1, 0.3, 0.55, 0.8, 1.0)
RULES = (("figure", 0.95), ("eq6", 0.05))
TASKS = ("A", "B", "C", "D")
pytestmark = pytest.mark.usefixtures("one_thread")


def fake_zoo(ta: float = 74.0, iso: float = 81.8, cts: float = 85.3, curve: bool = True) -> ZooEvidence:
    """A zoo's evidence from given numbers (the real builder is tested on digits-tiny)."""
    nai = pd.DataFrame([{"method": m, "task": t, "nai": v} for m, vs in
                        (("task_arithmetic", (0.1, 0.5, 0.7, 0.9)), ("iso_c", (0.6, 0.7, 0.8, 0.9)),
                         ("iso_cts", (0.7, 0.8, 0.85, 0.9))) for t, v in zip(TASKS, vs)])
    points = nai[nai["method"] != "iso_cts"].assign(sar_avg=[0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.96])
    stats, within = correlation(points["sar_avg"], points["nai"]), correlation(points["sar_avg"][:4], points["nai"][:4])
    frame = pd.DataFrame({"fraction": tour.FRACTIONS, "normalized": [87.0, 84.9, 86, 86.5, 87.4, 87, 86, 85.5, 85.3,
                                                                     85.3, iso]}) if curve else None
    return ZooEvidence("digits", TASKS, {"task_arithmetic": ta, "iso_c": iso, "iso_cts": cts},
                       {"task_arithmetic": 0.3, "iso_c": 1.1, "iso_cts": 1.8}, nai, points[["method", "task", "sar_avg", "nai"]],
                       stats["pearson"], within["pearson"], stats["n"], "figure", 0.95, frame)


def test_steps_follow_the_papers_order() -> None:
    steps = tour.tour(tour.TourState(), fake_zoo())
    assert [s.key for s in steps] == list(tour.STEP_KEYS)
    figs = [re.search(r"Fig\. (\w+)", s.title).group(1) for s in steps if "Fig." in s.title]
    assert figs == ["1", "2", "3a", "4", "5"]  # Fig. 1 first, then the paper's order
    for step in steps:
        assert step.figures and step.claims
        for f in step.figures:
            assert f.title and f.caption and f.figure.layout.title.text


def _independent_weak_chain(state: tour.TourState) -> dict[str, float]:
    zoo = toy.toy_zoo(state.shared, state.weak)
    return {m: toy.merge(zoo, m, {"common_fraction": state.fraction} if m == "iso_cts" else None).nai[-1]
            for m in toy.TOUR_METHODS}


@pytest.mark.slow
@pytest.mark.parametrize("rule,value", RULES)
def test_every_claim_holds_over_the_slider_grid(rule: str, value: float) -> None:
    """Each generated sentence asserts a relation between two numbers; at every grid point it must
    hold, appear in the step's text, and its numbers must be the ones computed independently here."""
    zoos = (fake_zoo(), fake_zoo(ta=86.0, iso=80.0, cts=80.0, curve=False), None)  # TA ahead, a tie, no zoo
    for (shared, weak), zoo in zip(itertools.product(SHARED, WEAK), itertools.cycle(zoos)):
        state = tour.TourState(shared=shared, weak=weak, rule=rule, value=value)
        steps = {s.key: s for s in tour.tour(state, zoo)}
        for step in steps.values():
            assert tour.words(step.lead) <= tour.LEAD_WORDS, (state, step.key, tour.words(step.lead))
            for claim in step.claims:
                assert claim.holds(), (state, step.key, claim)
                assert claim.text[1:] in step.text, (state, step.key, claim.text)
        # the numbers behind the claims, recomputed without the tour
        weak_nai = _independent_weak_chain(state)
        left, lift, further = steps["fig1"].claims
        assert (lift.left, lift.right) == pytest.approx((weak_nai["iso_c"], weak_nai["task_arithmetic"]))
        assert (further.left, further.right) == pytest.approx((weak_nai["iso_cts"], weak_nai["iso_c"]))
        ta_nai = toy.merge(toy.toy_zoo(shared, weak), "task_arithmetic").nai
        assert left.text.startswith(toy.task_names()[int(np.argmin(ta_nai))])
        rank = 2 if shared in (0.0, 1.0) else 4  # one part has weight 0 at either end
        assert f"rank {rank}" in steps["task_vectors"].claims[0].text
        z = toy.toy_zoo(shared, weak)
        u = torch.linalg.svd(sum(toy.task_matrices(z)).double())[0][:, :2].numpy()
        cosines = np.sort(np.cos(subspace_angles(u, z.shared_out.numpy())))[::-1]
        assert steps["task_vectors"].claims[1].text.endswith(
            "(principal cosines " + " and ".join(f"{c:.2f}" for c in cosines) + ")")
        if zoo is not None:
            real = steps["flattening"].claims[-1]
            assert (real.left, real.right) == (zoo.normalized["iso_c"], zoo.normalized["task_arithmetic"])


def test_claims_name_the_relation_that_holds_at_the_printed_precision() -> None:
    assert tour.versus(0.46, 0.29, "up {b} → {a}", "down {b} → {a}", "same {a}").text == "up 0.29 → 0.46"
    assert tour.versus(0.29, 0.46, "up {b} → {a}", "down {b} → {a}", "same {a}").text == "down 0.46 → 0.29"
    tie = tour.versus(0.4612, 0.4598, "up", "down", "same {a}")
    assert tie.text == "same 0.46" and tie.relation == "≈" and tie.holds()  # equal as printed
    assert not tour.Claim("Iso-C beats TA", 0.47, ">", 0.54).holds()  # a contradiction fails
    low = tour.lowest({"a": 0.5, "b": 0.2, "c": 0.9}, "NAI")
    assert low.text == "b has the lowest NAI (0.20)" and low.holds()
    top = tour.best({0.0: 0.5, 0.3: 0.57, 1.0: 0.47}, "mean", "β = ")
    assert top.text == "the best mean, 0.57, is at β = 0.3" and top.holds()
    assert tour.correlation_claim(0.71, 16, "r:").text.endswith("(strong)")
    assert tour.correlation_claim(0.18, 6, "r:").text.endswith("(none to speak of)")
    assert tour.correlation_claim(-0.39, 6, "r:").text.endswith("(inverse)")


def test_where_ta_wins_is_read_off_the_sweep() -> None:
    sweep = tour.shared_sweep(0.3, 0.25)
    wide = sweep.pivot(index="shared", columns="method", values="nai").round(2)
    mask = wide["task_arithmetic"] > wide[["iso_c", "iso_cts"]].max(axis=1)
    text, got = tour.where_ta_wins(sweep)
    assert (got == mask).all() and mask.any() and not mask.all()
    assert text == f"TA has the best mean toy NAI at shared = {tour._runs(mask)}"
    assert tour._runs(pd.Series([True, True, False, True], index=[0.0, 0.1, 0.2, 0.3])) == "0–0.1 and 0.3"


def test_interpolation_runs_from_task_arithmetic_to_iso_c() -> None:
    zoo = toy.toy_zoo()
    deltas = toy.task_matrices(zoo)
    np.testing.assert_allclose(toy.interpolated_delta(deltas, 0.0), sum(d.double() for d in deltas), atol=1e-9)
    flat = torch.linalg.svdvals(toy.interpolated_delta(deltas, 1.0))
    np.testing.assert_allclose(flat, flat.mean(), rtol=1e-9)  # β = 1: Iso-C's flat spectrum
    np.testing.assert_allclose(toy.interpolate(zoo, 1.0).nai, toy.merge(zoo, "iso_c").nai, atol=1e-4)
    np.testing.assert_allclose(toy.interpolate(zoo, 0.0).nai, toy.merge(zoo, "task_arithmetic").nai, atol=1e-4)


def test_default_settings_tell_the_papers_story() -> None:
    """At the defaults: TA leaves the weak task behind, Iso-C lifts it, Iso-CTS lifts it further and
    does at least as well as Iso-C on average (toy); the zoo's SAR tracks NAI."""
    steps = {s.key: s for s in tour.tour(tour.TourState(), fake_zoo())}
    left, lift, further = steps["fig1"].claims
    assert left.text.startswith("task 3 (weak) has the lowest") and lift.relation == ">" and further.relation == ">"
    assert steps["iso_cts"].claims[1].relation in (">", "≈")  # Iso-CTS's mean ≥ Iso-C's
    assert "(strong)" in steps["alignment"].claims[0].text


def test_fig3a_and_table1_published_numbers() -> None:
    table = fig3a.paper_nai().set_index(["method", "task"])["nai"]
    assert table["task_arithmetic", "SUN397"] == pytest.approx(-0.018, abs=1e-3)  # below zero-shot
    assert table["task_arithmetic", "MNIST"] == pytest.approx(0.97, abs=5e-3)
    assert (table["iso_c"] > table["task_arithmetic"]).all()
    lead = tour.build_step("table1", tour.TourState(), fake_zoo()).lead
    assert "TA 76.5%, Iso-C 92.9%, Iso-CTS 92.8%" in lead and "Iso-CTS keeps 85.3% against TA's 74.0%" in lead
    alignment = tour.build_step("alignment", tour.TourState(), fake_zoo()).lead
    assert "ρ_TA = 0.88" in alignment


def test_every_export_carries_the_settings_and_the_citation_and_keeps_its_legend_clear() -> None:
    state = tour.TourState(shared=0.3, weak=0.4)
    steps = tour.tour(state, fake_zoo())
    for step in steps:
        for f in step.figures:
            layout = f.figure.layout
            assert tour.SHORT_CITATION in layout.title.subtitle.text
            assert "shared 0.3" in layout.title.subtitle.text or "zoo" in layout.title.subtitle.text
            assert layout.legend.x >= 1 and layout.legend.xanchor == "left"  # right of the plot: clear of the title
    page = tour.render_handout(steps, state)
    assert "src=" not in "".join(re.findall(r"<script[^>]*>", page))  # nothing fetched
    assert page.count("plotly.js v") == 1
    assert html.escape(state.describe()) in page and html.escape(tour.CITATION) in page
    assert page.count("<figure>") == sum(len(s.figures) for s in steps)
    assert '"width": 1200, "height": 675' in page
    big = tour.presenter_style(steps[0].figures[0].figure, 520).layout
    assert min(big.font.size, big.title.font.size, big.title.subtitle.font.size, big.legend.font.size) >= 20


def test_toy_nai_below_the_axis_is_named() -> None:
    r = tour.toy_results(tour.TourState(shared=0.5, weak=0.1))
    low = [v for m in ("cart", "ties", "tsv_m", *toy.TOUR_METHODS) for v in r.nai(m) if v < tour.NAI_FLOOR]
    note = tour.below_floor(r, ("cart", "ties", "tsv_m", *toy.TOUR_METHODS))
    assert (note != "") == bool(low) and all(f"{v:.2f}" in note for v in low)
