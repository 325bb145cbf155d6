"""The dashboard over precomputed and cluster results: after ``python -m analysis precompute``, the
Alignment page's largest method set reads every per-layer result from the store and computes
none; started with a cluster address, the sidebar shows the cluster's nodes, CPUs and GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st

from analysis.__main__ import main
from analysis.correlation import ALL_METHODS
from analysis.decompositions import Decompositions
from tests.app.conftest import assert_clean, chart, open_page


@pytest.mark.slow
def test_alignment_largest_set_reads_the_precomputed_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ISOSCOPE_CACHE", str(tmp_path))  # a store only precompute has written to
    assert main(["precompute", "--zoo", "digits-tiny", "--points", "all", "--threads", "1"]) == 0
    st.cache_resource.clear()  # no evaluator, Merger or per-layer result of an earlier test in memory
    computed: list[tuple] = []
    original = Decompositions._cached

    def spy(self: Decompositions, name: tuple, compute: object) -> object:
        def counted() -> object:
            computed.append(name)
            return compute()
        return original(self, name, counted)

    monkeypatch.setattr(Decompositions, "_cached", spy)
    at = open_page()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()
    computed.clear()  # the Overview's task-vector geometry is not precompute's business
    at.switch_page("pages/alignment.py").run()
    at.radio(key="iso_align_points").set_value(ALL_METHODS).run()
    assert_clean(at)
    assert len(chart(at, "iso_align_bars")["data"]) == 7  # every registered method drawn
    assert computed == []  # ... and not one layer result computed: all from the store


@pytest.mark.slow
def test_sidebar_shows_the_cluster(monkeypatch: pytest.MonkeyPatch, ray_cluster: object) -> None:
    monkeypatch.setenv("ISOSCOPE_RAY_ADDRESS", ray_cluster.address)
    at = open_page()
    assert any(c.value.startswith(f":material/hub: Ray cluster at `{ray_cluster.address}`: 3 nodes, 2 CPUs, 0 GPUs")
               for c in at.sidebar.caption)
