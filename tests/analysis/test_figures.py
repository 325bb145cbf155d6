"""Every figure builder returns a figure with the expected traces, labels and markers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from analysis import figures


def _spectra() -> pd.DataFrame:
    rows = []
    for layer in ("blk0 · attn.in_proj", "blk1 · mlp.c_fc"):
        for source, kind in (("A", "task"), ("B", "task"), ("TA sum", "sum"), ("Iso-CTS", "merged")):
            sigma = np.array([4.0, 2.0, 1.0, 0.5])
            energy = np.cumsum(sigma ** 2) / np.sum(sigma ** 2)
            rows += [{"key": layer, "layer": layer, "source": source, "kind": kind, "index": i + 1, "sigma": s,
                      "energy": e} for i, (s, e) in enumerate(zip(sigma, energy))]
    return pd.DataFrame(rows)


def test_spectrum_and_energy_figures() -> None:
    boundary = {"k": 3, "s": 1}
    fig = figures.spectrum_figure(_spectra(), "blk1 · mlp.c_fc", boundary)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["A", "B", "TA sum", "Iso-CTS"]
    assert fig.layout.yaxis.type == "log" and list(fig.data[0].y) == [4.0, 2.0, 1.0, 0.5]
    assert fig.layout.shapes[0].x0 == 3.5 and "k = 3" in fig.layout.annotations[0].text
    assert fig.data[2].line.dash == "dash"
    energy = figures.energy_figure(_spectra(), "blk0 · attn.in_proj")
    assert len(energy.data) == 4 and energy.data[0].y[-1] == pytest.approx(100.0) and not energy.layout.shapes


def _sar() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "task": t, "key": layer, "layer": layer, "sar": s, "k_m": 5, "r": 8}
                         for m in ("iso_c", "ta") for t, s in (("A", 0.9), ("B", 0.4))
                         for layer in ("l0", "l1", "l2")])


def test_sar_heatmap_and_bars() -> None:
    heat = figures.sar_heatmap(_sar(), "iso_c")
    assert len(heat.data) == 1 and heat.data[0].type == "heatmap"
    assert list(heat.data[0].y) == ["A", "B"] and list(heat.data[0].x) == ["l0", "l1", "l2"]
    assert np.asarray(heat.data[0].z)[1].tolist() == [0.4, 0.4, 0.4] and "iso_c" in heat.layout.title.text
    bars = figures.sar_avg_bars(pd.DataFrame({"method": ["Iso-C", "Iso-C", "TA", "TA"], "task": ["A", "B"] * 2,
                                              "sar_avg": [0.9, 0.8, 0.5, 0.4]}))
    assert [t.name for t in bars.data] == ["Iso-C", "TA"] and list(bars.data[1].y) == [0.5, 0.4]


def test_sar_nai_scatter_has_fit_line_and_r_in_title() -> None:
    points = pd.DataFrame({"method": ["TA", "TA", "Iso-C", "Iso-C"], "task": ["A", "B", "A", "B"],
                           "sar_avg": [0.1, 0.2, 0.3, 0.4], "nai": [1.0, 3.0, 5.0, 7.0]})
    fig = figures.sar_nai_scatter(points, {"pearson": 1.0, "pearson_p": 0.001, "spearman": 1.0, "n": 4})
    assert [t.name for t in fig.data] == ["TA", "Iso-C", "least-squares fit"]
    fit = fig.data[2]
    assert list(fit.x) == pytest.approx([0.1, 0.4]) and list(fit.y) == pytest.approx([1.0, 7.0])
    assert "r = 1.00" in fig.layout.title.text and "n = 4" in fig.layout.title.text


def _sweep(param: str) -> pd.DataFrame:
    return pd.DataFrame([{"method": "iso_cts", "param": param, "value": v, "alpha": 1.0, "split": split, "task": t,
                          "accuracy": acc + v / 10, "normalized": 0.0, "nai": 0.0}
                         for v in (0.0, 0.5, 1.0) for split in ("test", "val") for t, acc in (("A", 0.5), ("B", 0.7))])


def test_sweep_curves_have_tasks_average_and_current_point() -> None:
    def builder(sweep: pd.DataFrame, current: float | None = None):
        return figures.sweep_curve(sweep, "Iso-CTS", "common fraction", current)

    fig = builder(_sweep("common_fraction"), current=0.45)
    assert fig.layout.title.text == "Iso-CTS accuracy vs common fraction"
    assert [t.name for t in fig.data] == ["A", "B", "average", "current"]
    assert list(fig.data[2].y) == pytest.approx([60.0, 65.0, 70.0])  # mean of tasks, in %
    assert list(fig.data[3].x) == [0.5] and list(fig.data[3].y) == pytest.approx([65.0])
    assert "(%)" in fig.layout.yaxis.title.text
    assert [t.name for t in builder(_sweep("x")).data] == ["A", "B", "average"]


def test_alpha_curve_and_method_bars() -> None:
    fig = figures.alpha_curve(_sweep("alpha"), chosen=0.5)
    assert [t.name for t in fig.data] == ["val (average)", "test (average)"] and fig.layout.shapes[0].x0 == 0.5
    bars = figures.method_bars(pd.DataFrame({"method": ["TA", "Iso-C"], "accuracy": [60.0, 70.0],
                                             "normalized": [70.0, 80.0]}))
    assert [t.name for t in bars.data] == ["absolute (%)", "normalized (%)"] and list(bars.data[0].x) == ["TA", "Iso-C"]


def test_methods_keep_their_house_colour_in_every_figure() -> None:
    """A method's colour comes from ``analysis.style`` by name, not from its position in the
    frame: Iso-C is the same blue in the spectrum, the SAR bars and the SAR–NAI scatter, whatever
    order the methods arrive in (the app and the HTML report use these builders alike)."""
    from analysis.style import method_color
    from merging.registry import get_method

    iso_c = get_method("iso_c").color
    assert method_color("Iso-C") == method_color("iso_c") == iso_c
    spectra = _spectra()
    merged = spectra[spectra["kind"] == "merged"]["source"].unique()
    fig = figures.spectrum_figure(spectra, "blk1 · mlp.c_fc")
    checked = [t.name for t in fig.data if t.name in merged]
    assert checked == ["Iso-CTS"] and fig.data[-1].line.color == get_method("iso_cts").color
    for order in (["Iso-C", "Task Arithmetic"], ["Task Arithmetic", "Iso-C"]):
        avg = pd.DataFrame({"method": [m for m in order for _ in range(2)], "task": ["A", "B"] * 2,
                            "sar_avg": [0.9, 0.8, 0.5, 0.4]})
        bars = {t.name: t.marker.color for t in figures.sar_avg_bars(avg).data}
        points = avg.assign(nai=[0.8, 0.7, 0.3, 0.2])
        dots = {t.name: t.marker.color for t in figures.sar_nai_scatter(points).data if t.mode == "markers"}
        assert bars["Iso-C"] == dots["Iso-C"] == iso_c
        assert bars["Task Arithmetic"] == dots["Task Arithmetic"] == get_method("task_arithmetic").color != iso_c


def test_fig3a_scatter_has_one_symbol_per_method_and_one_colour_per_task() -> None:
    from analysis.figures import fig3a_scatter

    points = pd.DataFrame({"method": ["Task Arithmetic", "Iso-C"] * 2, "task": ["A", "A", "B", "B"],
                           "sar_avg": [0.5, 0.9, 0.6, 0.95], "nai": [0.1, 0.8, 0.3, 0.85]})
    fig = fig3a_scatter(points, {"pearson": 0.91, "n": 4}, {"A": "#111111", "B": "#222222"})
    assert [(t.marker.symbol, t.marker.color) for t in fig.data] == [
        ("star", "#111111"), ("triangle-up", "#111111"), ("star", "#222222"), ("triangle-up", "#222222")]
    assert "Pearson r = 0.91" in fig.layout.title.text and all(t.mode == "markers" for t in fig.data)  # no fit line
