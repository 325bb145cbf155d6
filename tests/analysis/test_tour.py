"""The Learn tour's content: seven steps in the paper's order, every figure titled and captioned,
texts that quote the toy's numbers, Fig. 3a's NAI from the published accuracies, and a
self-contained HTML handout."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest

from analysis import fig3a, tour


@pytest.fixture(scope="module")
def steps() -> list[tour.Step]:
    points = pd.DataFrame({"method": ["task_arithmetic", "iso_c"] * 3, "task": ["A", "A", "B", "B", "C", "C"],
                           "sar_avg": [0.5, 0.9, 0.6, 0.95, 0.7, 0.97], "nai": [0.1, 0.8, 0.3, 0.85, 0.5, 0.9]})
    return tour.tour(tour.TourState(), points, "a test zoo")


def test_steps_follow_the_papers_order_and_every_figure_is_titled_and_captioned(steps: list[tour.Step]) -> None:
    assert [s.key for s in steps] == ["task_vectors", "alignment", "paper", "flattening", "iso_cts", "fig1", "others"]
    for step in steps:
        assert step.figures
        for f in step.figures:
            assert f.title and f.caption and f.figure.layout.title.text  # titled in the app and in exports


def test_texts_quote_the_toys_numbers(steps: list[tour.Step]) -> None:
    r = tour.toy_results(tour.TourState())
    ta, iso = r.nai("task_arithmetic"), r.nai("iso_c")
    assert f"Iso-C lifts the weak task from {ta[2]:.2f} to {iso[2]:.2f}" in steps[3].text
    assert "rank 4" in steps[0].text and "rank 2 (" not in steps[0].text
    assert "k = 2, s = 2" in steps[4].text
    assert "1 − ε²" not in steps[1].text and "figure rule with threshold 0.95" in steps[1].text
    eq6 = tour.step_alignment(tour.toy_results(tour.TourState(rule="eq6", value=0.05)))
    assert "99.75% of the energy" in eq6.text  # ε bounds the norm: 1 − ε² of the energy
    assert "0.45 and 0.8–1" not in steps[6].text and "TA has the best mean toy NAI at shared = " in steps[6].text
    bars = steps[4].figures[1].figure
    assert [t.name for t in bars.data] == ["Task Arithmetic", "Iso-C", "Iso-CTS"]
    np.testing.assert_allclose(bars.data[1].y, iso)


def test_where_task_arithmetic_wins_is_read_off_the_sweep() -> None:
    sweep = tour.shared_sweep(0.3, 0.25).pivot(index="shared", columns="method", values="nai")
    best = sweep.idxmax(axis=1)
    assert best[0.9] == "task_arithmetic" and best[0.5] != "task_arithmetic"
    text = tour.step_others(tour.toy_results(tour.TourState())).text
    wins = re.search(r"at shared = ([0-9.–and ]+)\.", text).group(1)
    assert "0.9" in wins or "0.8–1" in wins or "–1" in wins


def test_fig3a_nai_from_the_published_accuracies() -> None:
    table = fig3a.paper_nai().set_index(["method", "task"])["nai"]
    assert table["task_arithmetic", "SUN397"] == pytest.approx(-0.018, abs=1e-3)  # below zero-shot
    assert table["task_arithmetic", "MNIST"] == pytest.approx(0.97, abs=5e-3)
    iso = table["iso_c"]
    assert iso.min() == pytest.approx(0.64, abs=5e-3) and iso.max() == pytest.approx(0.99, abs=5e-3)
    assert (iso > table["task_arithmetic"]).all()


def test_zoo_points_in_fig3a_layout_and_the_correlation_in_words(steps: list[tour.Step]) -> None:
    fig = steps[2].figures[1].figure
    assert {t.marker.symbol for t in fig.data} == {"star", "triangle-up"}
    assert len({t.marker.color for t in fig.data}) == 3  # one colour per task
    from analysis.correlation import correlation

    r = correlation([0.5, 0.9, 0.6, 0.95, 0.7, 0.97], [0.1, 0.8, 0.3, 0.85, 0.5, 0.9])["pearson"]
    assert f"6-point Pearson r is **{r:.2f}**" in steps[2].text and "strong" in steps[2].text
    assert tour.strength_words(0.18) == "none to speak of" and tour.strength_words(-0.39) == "inverse"


def test_handout_is_self_contained_with_every_step_and_caption(steps: list[tour.Step]) -> None:
    page = tour.render_handout(steps, tour.TourState())
    assert "src=" not in "".join(re.findall(r"<script[^>]*>", page))  # nothing fetched
    assert page.count("plotly.js v") == 1  # plotly.js inlined once
    for step in steps:
        assert html.escape(step.title) in page
        for f in step.figures:
            assert f"<b>{html.escape(f.title)}.</b>" in page
    assert page.count("<figure>") == sum(len(s.figures) for s in steps)
    assert page.count('"format": "svg", "filename": "isoscope-') == page.count("<figure>")  # fixed-size SVG
    assert '"width": 1200, "height": 675' in page
