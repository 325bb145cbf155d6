"""Every page in AppTest on the digits-tiny zoo: move its controls and check that the charts
change as the maths says they must (not merely that something changed)."""

from __future__ import annotations

import numpy as np
import pytest

from merging.methods.iso import common_rank
from merging.registry import all_methods
from tests.app.conftest import assert_clean, chart, open_page, trace, values

pytestmark = pytest.mark.slow  # the first test builds digits-tiny (seconds); the rest reuse it


def test_overview_geometry_follows_the_parameter_scope() -> None:
    at = open_page()
    acc = chart(at, "iso_overview_acc")
    zero, fine = values(trace(acc, "zero-shot θ0")["y"]), values(trace(acc, "fine-tuned θt")["y"])
    assert len(zero) == 8 and fine.mean() > zero.mean()  # fine-tuning helps on average
    whole_cos = values(chart(at, "iso_overview_cos")["data"][0]["z"])
    whole_norm = values(chart(at, "iso_overview_norms")["data"][0]["y"])
    np.testing.assert_allclose(np.diag(whole_cos), 1.0, atol=1e-9)
    np.testing.assert_allclose(whole_cos, whole_cos.T, atol=1e-12)
    layer = at.selectbox(key="iso_overview_scope")
    layer.set_value(layer.options[1]).run()
    one_cos = values(chart(at, "iso_overview_cos")["data"][0]["z"])
    one_norm = values(chart(at, "iso_overview_norms")["data"][0]["y"])
    assert not np.allclose(one_cos, whole_cos)
    assert (one_norm < whole_norm).all()  # one layer holds part of each task vector's norm


def test_spectra_fraction_slider_moves_the_boundary_and_the_flat_level() -> None:
    at = open_page("pages/spectra.py")
    tasks = 8
    levels = {}
    for fraction in (0.8, 0.3):
        at.slider(key="iso_spectra_fraction").set_value(fraction).run()
        fig = chart(at, "iso_spectra_fig")
        r = len(values(trace(fig, "TA sum")["y"]))
        k, _ = common_rank(r, tasks, fraction)
        assert fig["layout"]["shapes"][0]["x0"] == pytest.approx(k + 0.5)
        iso_cts = values(trace(fig, "Iso-CTS")["y"])
        np.testing.assert_allclose(iso_cts, iso_cts[0], rtol=1e-4)  # flattened: every σ equals σ̄
        energy = values(trace(chart(at, "iso_spectra_fig_energy"), "TA sum")["y"])
        assert energy[-1] == pytest.approx(100.0) and (np.diff(energy) >= -1e-9).all()
        levels[fraction] = iso_cts[0]
    assert levels[0.8] != pytest.approx(levels[0.3])
    at.toggle(key="iso_spectra_log").set_value(False).run()
    assert chart(at, "iso_spectra_fig")["layout"]["yaxis"]["type"] == "linear"
    at.radio(key="iso_spectra_layout").set_value("All layers").run()
    assert len(chart(at, "iso_spectra_fig_all")["layout"]["annotations"]) >= 10  # one title per layer


def test_alignment_eps_slider_can_only_lower_sar() -> None:
    at = open_page("pages/alignment.py")
    figure_rule = chart(at, "iso_align_heatmap")["data"][0]
    at.radio(key="iso_align_rule").set_value("eq6").run()
    before = chart(at, "iso_align_heatmap")["data"][0]
    k_figure, k_eq6 = values(figure_rule["customdata"]), values(before["customdata"])
    assert (k_figure <= k_eq6).all() and (k_figure < k_eq6).any()  # 0.95 of the norm keeps fewer than ε = 0.05
    at.slider(key="iso_align_eps").set_value(0.3).run()
    after = chart(at, "iso_align_heatmap")["data"][0]
    z0, z1 = values(before["z"]), values(after["z"])
    k0, k1 = values(before["customdata"]), values(after["customdata"])
    assert ((z0 >= 0) & (z0 <= 1 + 1e-6)).all()  # float32 bases: |UᵀU − I| ~ 1e-7
    assert (z1 <= z0 + 1e-6).all() and (z1 < z0 - 1e-3).any()  # smaller k_M, smaller projection
    assert (k1 <= k0).all() and (k1 < k0).any()
    bars = chart(at, "iso_align_bars")
    assert {t["name"] for t in bars["data"]} >= {"Task Arithmetic", "Iso-C", "Iso-CTS"}
    scatter = chart(at, "iso_align_scatter")
    assert "Pearson r" in scatter["layout"]["title"]["text"]
    names = {t["name"] for t in scatter["data"]} - {"least-squares fit"}
    assert names == {"Task Arithmetic", "Iso-C"}  # Fig. 3a's set by default, as the report
    assert any(c.value.startswith("16 points: Task Arithmetic, Iso-C × 8 tasks") for c in at.caption)
    at.toggle(key="iso_align_fig3a").set_value(True).run()
    fig3a = chart(at, "iso_align_scatter")
    assert len(fig3a["data"]) == 16 and {t["marker"]["symbol"] for t in fig3a["data"]} == {"star", "triangle-up"}
    at.radio(key="iso_align_points").set_value(at.radio(key="iso_align_points").options[1]).run()
    assert len(chart(at, "iso_align_scatter")["data"]) == 48  # six methods × 8 tasks
    six = {"Task Arithmetic", "TIES-Merging", "TSV-Merge", "Iso-C", "Iso-CTS", "CART"}
    assert {t["name"] for t in chart(at, "iso_align_bars")["data"]} == six  # the same set in the bars


def test_alignment_computes_only_the_compared_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the page merges Fig. 3a's pair and the sidebar's method (Iso-CTS) and nothing
    else; the largest set brings every registered method into the bars and the scatter."""
    from analysis.correlation import ALL_METHODS
    from analysis.decompositions import Decompositions

    asked: set[str] = set()
    original = Decompositions.merged_layer

    def spy(self: Decompositions, key: str, method: str, *args: object, **kwargs: object) -> object:
        asked.add(method)
        return original(self, key, method, *args, **kwargs)

    monkeypatch.setattr(Decompositions, "merged_layer", spy)
    at = open_page()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()  # fixed α: fewer evaluations
    asked.clear()
    at.switch_page("pages/alignment.py").run()
    assert_clean(at)
    assert asked == {"iso_cts", "task_arithmetic", "iso_c"}
    assert [t["name"] for t in chart(at, "iso_align_bars")["data"]] == ["Task Arithmetic", "Iso-C", "Iso-CTS"]
    assert any(c.value.startswith("SAR_avg of Task Arithmetic, Iso-C, Iso-CTS: the set at the top, plus the "
                                  "sidebar's Iso-CTS") for c in at.caption)
    assert {t["name"] for t in chart(at, "iso_align_scatter")["data"]} - {"least-squares fit"} == {"Task Arithmetic",
                                                                                                  "Iso-C"}
    at.radio(key="iso_align_points").set_value(ALL_METHODS).run()
    assert_clean(at)
    everything = {m.display_name for m in all_methods().values()}
    assert asked == set(all_methods()) and len(everything) == 7
    assert {t["name"] for t in chart(at, "iso_align_bars")["data"]} == everything
    assert {t["name"] for t in chart(at, "iso_align_scatter")["data"]} - {"least-squares fit"} == everything
    assert any(c.value.startswith("56 points: ") for c in at.caption)  # seven methods × 8 tasks


def test_common_subspace_sliders_move_the_highlighted_point() -> None:
    at = open_page()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()
    at.switch_page("pages/common_subspace.py").run()
    assert not at.exception and not at.error
    for method, value in (("iso_cts", 0.3), ("cart", 0.32)):
        at.select_slider(key=f"iso_common_{method}").set_value(value).run()
        fig = chart(at, f"iso_common_fig_{method}")
        current, average = trace(fig, "current"), trace(fig, "average")
        xs, ys = values(average["x"]), values(average["y"])
        assert values(current["x"]).tolist() == [value]
        assert values(current["y"])[0] == pytest.approx(ys[np.argmin(abs(xs - value))])
        per_task = [values(t["y"]) for t in fig["data"] if t["name"] not in ("average", "current")]
        np.testing.assert_allclose(np.mean(per_task, axis=0), ys, atol=1e-9)


def test_merge_page_follows_alpha_and_offers_downloads() -> None:
    at = open_page()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()
    at.switch_page("pages/merge_export.py").run()
    merged = {}
    for alpha in (0.3, 1.5):
        at.slider(key="iso_alpha").set_value(alpha).run()
        assert not at.exception and not at.error
        fig = chart(at, "iso_merge_fig")
        merged[alpha] = values(trace(fig, "Iso-CTS")["y"])
        assert at.metric[3].value == f"{alpha:g}"
        zero, fine = values(trace(fig, "zero-shot θ0")["y"]), values(trace(fig, "fine-tuned θt")["y"])
        assert len(zero) == len(fine) == len(merged[alpha]) == 8
    assert not np.allclose(merged[0.3], merged[1.5])
    assert {b.key for b in at.get("download_button")} >= {"iso_dl_model", "iso_dl_table", "iso_dl_refs"}


@pytest.mark.usefixtures("tour_evidence")
def test_learn_tour_runs_on_one_toy_state_and_keeps_it_in_the_url() -> None:
    from analysis import tour

    at = open_page("pages/learn.py")
    for weak in (0.3, 1.0):
        if weak != 0.3:
            at.slider(key="iso_learn_weak").set_value(weak).run()
            assert_clean(at)
        expected = tour.toy_results(tour.TourState(weak=weak))
        bars = chart(at, "iso_learn_fig_cts_nai")  # TA, Iso-C, Iso-CTS side by side, α tuned per method
        for m in ("task_arithmetic", "iso_c", "iso_cts"):
            name = {"task_arithmetic": "Task Arithmetic", "iso_c": "Iso-C", "iso_cts": "Iso-CTS"}[m]
            np.testing.assert_allclose(values(trace(bars, name)["y"]), expected.nai(m), rtol=1e-9)
        flat = values(trace(chart(at, "iso_learn_fig_flat"), "Iso-C (after)")["y"])
        np.testing.assert_allclose(flat, flat.mean(), rtol=1e-4)
        assert at.query_params["weak"] == f"{weak:g}"
        assert f"weak task {weak:g}" in chart(at, "iso_learn_fig_fig1")["layout"]["title"]["subtitle"]["text"]
    at.slider(key="iso_learn_fraction").set_value(0.5).run()
    stacked = chart(at, "iso_learn_fig_stacked")
    assert [len(t["x"]) for t in stacked["data"]] == [5, 1, 1, 1]  # k = 5 common, s = 1 per task
    assert "k = 5" in stacked["layout"]["title"]["text"] and "s = 1" in stacked["layout"]["title"]["text"]
    # the embedded zoo's real merges: Fig. 3a's points, Fig. 5's curve and Table 1's bars
    scatter = chart(at, "iso_learn_fig_zoo_points")
    assert len(scatter["data"]) == 16 and "digits-tiny zoo" in scatter["layout"]["title"]["text"]
    assert len(values(chart(at, "iso_learn_fig_fraction")["data"][0]["y"])) == 11
    assert [t["name"] for t in chart(at, "iso_learn_fig_table1")["data"]] == ["paper, Table 1 (ViT-B/32)",
                                                                             "digits-tiny zoo (live)"]
    assert len(at.get("plotly_chart")) == 14
    assert any(b.key == "iso_learn_handout" for b in at.get("download_button"))


@pytest.mark.usefixtures("tour_evidence")
def test_learn_presenter_mode_from_a_prepared_link() -> None:
    at = open_page()
    at.query_params.update({"step": "4", "shared": "0.3", "weak": "0.4", "present": "1"})
    at.switch_page("pages/learn.py").run()
    assert_clean(at)
    assert at.slider(key="iso_learn_shared").value == pytest.approx(0.3)
    assert at.slider(key="iso_learn_weak").value == pytest.approx(0.4)
    assert [c.key for c in at.get("plotly_chart")] == ["iso_learn_fig_zoo_points", "iso_learn_fig_toy_points"]
    assert any("stSidebar" in m.value and "display: none" in m.value for m in at.markdown)  # sidebar hidden
    layout = chart(at, "iso_learn_fig_zoo_points")["layout"]
    assert min(layout["font"]["size"], layout["title"]["font"]["size"], layout["legend"]["font"]["size"]) >= 20
    assert not at.main.caption  # no settings note, no captions: the lead only
    at.button(key="iso_learn_next").click().run()
    assert at.query_params["step"] == "5" and [c.key for c in at.get("plotly_chart")] == ["iso_learn_fig_interp"]
    at.button(key="iso_learn_prev").click().run()
    at.button(key="iso_learn_prev").click().run()
    assert at.query_params["step"] == "3"
    at.button(key="iso_learn_reset").click().run()
    assert at.query_params["step"] == "1" and at.query_params["shared"] == "0.5"
    assert at.button(key="iso_learn_prev").disabled
    at.toggle(key="iso_learn_present").set_value(False).run()
    assert len(at.get("plotly_chart")) == 14 and at.query_params["present"] == "0"
    assert not any("stSidebar" in m.value for m in at.markdown)


def test_learn_survives_a_mangled_link() -> None:
    at = open_page()
    at.query_params.update({"step": "99", "shared": "nan", "weak": "7", "fraction": "abc", "rule": "x", "k": "-1"})
    at.switch_page("pages/learn.py").run()
    assert_clean(at)  # clamped or defaulted, never an exception
    assert at.slider(key="iso_learn_shared").value == pytest.approx(0.5)  # NaN → default
    assert at.slider(key="iso_learn_weak").value == pytest.approx(1.0)  # clamped to the slider's range
    assert at.slider(key="iso_learn_fraction").value == pytest.approx(0.25)
    assert at.radio(key="iso_learn_rule").value == "figure" and at.slider(key="iso_learn_value").value == 0.01
    assert at.query_params["step"] == "9"


def test_sidebar_builds_one_slider_per_registry_parameter() -> None:
    at = open_page()
    for name, method in all_methods().items():
        at.selectbox(key="iso_method").set_value(name).run()
        for param in method.params:
            slider = at.slider(key=f"iso_p_{name}_{param.name}")
            assert (slider.min, slider.max) == (param.low, param.high)
            assert slider.value == param.default
        assert (method.fixed_alpha is None) == any(r.key == "iso_alpha_mode" for r in at.radio)


PAGE_TITLES = {"pages/overview.py": "Overview", "pages/spectra.py": "Spectra", "pages/alignment.py": "Alignment",
               "pages/common_subspace.py": "Common subspace", "pages/merge_export.py": "Merge & export",
               "pages/learn.py": "Learn"}


def test_every_page_shows_and_logs_its_timings(caplog: pytest.LogCaptureFixture) -> None:
    """Each page ends with a Timings expander listing this run's sections (the page itself, the sidebar)
    with their milliseconds, and the same sections reach the server log (logger ui.timing)."""
    import logging
    import re

    caplog.set_level(logging.INFO, logger="ui.timing")
    at = open_page()
    for path, title in PAGE_TITLES.items():
        caplog.clear()
        at.switch_page(path).run()
        assert_clean(at)
        timings = [e for e in at.expander if "Timings" in e.label]
        assert len(timings) == 1, f"{title}: {[e.label for e in at.expander]}"
        text = "\n".join(m.value for m in timings[0].markdown)
        shown = dict(re.findall(r"- (.+?): \*\*([\d,]+) ms\*\*", text))
        assert f"page {title}" in shown and "sidebar" in shown, (title, text)
        logged = [r.getMessage() for r in caplog.records if r.name == "ui.timing"]
        assert any(f"page {title}: " in m for m in logged), (title, logged)
        page_ms = float(shown[f"page {title}"].replace(",", ""))
        assert all(float(ms.replace(",", "")) <= page_ms + 1 for name, ms in shown.items()
                   if name not in ("sidebar", f"page {title}", "open the zoo", "task vectors (Merger)")), shown
