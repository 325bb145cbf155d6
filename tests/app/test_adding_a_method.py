"""docs/adding_a_method.md, proved: a method registered by one module appears, with nothing else
edited, in the CLI's ``methods`` listing, the engine, the sidebar's schema, every page's method
list and the house colours. The throwaway method here is that one module."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from merging.cli import main
from merging.linalg import truncated_svd
from merging.merge import Merger
from merging.methods.common import Layer, Params, matrix_only
from merging.registry import Method, Param, get_method, register, unregister
from tests.app.conftest import chart, open_page, trace, values

pytestmark = pytest.mark.slow  # AppTest on digits-tiny

NAME = "sum_top"


@matrix_only
def sum_top(layer: Layer, params: Params) -> torch.Tensor:
    """Δ = the rank-ceil(keep·r) truncation of Σt Δt."""
    u, s, vh = truncated_svd(layer.total(), math.ceil(params["keep"] * layer.rank))  # (m,k),(k,),(k,n)
    return (u * s) @ vh


@pytest.fixture
def throwaway() -> Iterator[Method]:
    method = register(Method(
        name=NAME, display_name="Sum top-k", paper_url="https://arxiv.org/abs/2212.04089",
        summary="Keeps the top directions of the Task Arithmetic sum.", fn=sum_top, color="#0B7285",
        params=(Param("keep", 0.5, 0.1, 1.0, 0.1, "Share of the rank kept.", label="kept share",
                      sweep=(0.5, 1.0)),),
        spectral=True))
    yield method
    unregister(NAME)


def test_engine_and_cli_know_the_new_method(throwaway: Method, capsys: pytest.CaptureFixture[str]) -> None:
    gen = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(4, generator=gen)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in pre.items()} for _ in range(3)]
    delta = Merger(pre, fts).update(NAME, {"keep": 0.5}).delta
    total = sum(ft["w"].double() - pre["w"].double() for ft in fts)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    torch.testing.assert_close(delta["w"].double(), (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta["b"], sum(ft["b"] - pre["b"] for ft in fts) / 3)  # matrix_only: the mean
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert f"{NAME:18s} Sum top-k" in listing and "--param keep=VALUE  default 0.5, range [0.1, 1]" in listing


def test_sidebar_and_pages_list_the_new_method(throwaway: Method) -> None:
    from analysis.style import method_color

    assert method_color(NAME) == method_color("Sum top-k") == "#0B7285"
    at = open_page()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()  # fixed α: fewer evaluations
    assert "Sum top-k" in at.selectbox(key="iso_method").options
    at.selectbox(key="iso_method").set_value(NAME).run()
    slider = at.slider(key=f"iso_p_{NAME}_keep")
    assert (slider.min, slider.max, slider.value, slider.label) == (0.1, 1.0, 0.5, "kept share")
    at.switch_page("pages/spectra.py").run()
    assert "Sum top-k" in at.multiselect(key="iso_spectra_methods").options
    flat = [t for t in chart(at, "iso_spectra_fig")["data"] if t["name"] == "Sum top-k"]
    assert flat and flat[0]["line"]["color"] == "#0B7285"
    at.switch_page("pages/alignment.py").run()
    assert "Sum top-k" in {t["name"] for t in chart(at, "iso_align_bars")["data"]}
    at.switch_page("pages/common_subspace.py").run()
    assert not at.exception and not at.error
    curve = chart(at, f"iso_common_fig_{NAME}")
    assert values(trace(curve, "average")["x"]).tolist() == [0.5, 1.0]
    assert get_method(NAME).swept().label == "kept share"
