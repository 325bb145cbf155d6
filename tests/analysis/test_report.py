"""The report: results.json layout, a self-contained HTML page, the CLI's exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.__main__ import main
from analysis.evaluation import Evaluator
from analysis.report import build_report, format_summary, summary_table, write_report
from analysis.store import ResultStore
from tests.analysis.synthetic import SyntheticZoo

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["weight_averaging", "task_arithmetic", "iso_c", "iso_cts"]


def test_report_layout_and_html(tmp_path: Path) -> None:
    ev = Evaluator(SyntheticZoo(), store=ResultStore(tmp_path / "r.sqlite"))
    rep = build_report(ev, METHODS)
    json_path, html_path = write_report(rep, tmp_path / "out")
    results = json.loads(json_path.read_text())
    assert set(results) == {"tasks", "zero_shot", "finetuned", "methods", "correlation", "k_m_rule", "points",
                            "max_images", "sample_sizes"}
    assert results["max_images"] is None and set(results["sample_sizes"].values()) == {None}  # full splits
    assert results["k_m_rule"] == {"rule": "figure", "value": 0.95}
    assert results["points"]["methods"] == ["task_arithmetic", "iso_c"]  # Fig. 3a's set, as the Alignment view
    assert results["tasks"] == ["A", "B", "C"] and list(results["methods"]) == METHODS
    entry = results["methods"]["iso_cts"]
    assert set(entry) == {"params", "alpha", "test_acc", "val_acc", "normalized", "nai", "sar_avg"}
    assert entry["params"] == {"common_fraction": pytest.approx(0.8)} and set(entry["nai"]) == {"A", "B", "C"}
    assert results["methods"]["weight_averaging"]["alpha"] == pytest.approx(1 / 3)
    assert set(results["correlation"]) == {"pearson", "pearson_p", "spearman", "spearman_p", "n"}
    assert results["correlation"]["n"] == 6  # 2 methods × 3 tasks
    page = html_path.read_text()
    assert re.findall(r"<script[^>]*>", page) == ["<script>"] * page.count("<script")  # nothing fetched
    assert "plotly.js v" in page and page.count('class="plotly-graph-div"') == 6
    assert "Iso-CTS" in page and "Pearson r" in page
    text = format_summary(rep)
    assert "zero-shot" in text and "fine-tuned" in text and "Pearson r" in text
    assert list(rep.summary["method"][:2]) == ["zero-shot", "fine-tuned"] and len(rep.summary) == 2 + len(METHODS)
    before = ev.evaluations
    build_report(ev, METHODS)
    assert ev.evaluations == before  # a rerun is served by the store


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--zoo", str(tmp_path / "missing-folder"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)


def test_cli_unknown_method_exits_2(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "--zoo", "digits-tiny", "--methods", "nope",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_report_k_rule_and_point_set_follow_the_arguments(tmp_path: Path) -> None:
    from analysis.__main__ import POINTS
    from analysis.correlation import POINT_SETS

    assert list(POINTS.values()) == list(POINT_SETS)  # the CLI offers the Alignment view's sets, in its order
    ev = Evaluator(SyntheticZoo(), store=ResultStore(tmp_path / "r.sqlite"))
    six = "six methods: TA, TIES, TSV-M, Iso-C, Iso-CTS, CART"
    rep = build_report(ev, METHODS, eps=0.05, rule="eq6", point_set=six)
    assert rep.results["k_m_rule"] == {"rule": "eq6", "value": 0.05}
    assert rep.results["points"]["methods"] == ["task_arithmetic", "iso_c", "iso_cts"]  # the evaluated ones
    assert rep.results["correlation"]["n"] == 9 and len(rep.points) == 9
    assert "Task Arithmetic, Iso-C, Iso-CTS" in format_summary(rep)


@pytest.mark.parametrize("sizes", [{"A": 50, "B": 50}, {"A": 10, "B": None}, {"A": None, "B": None}])
def test_summary_carries_the_standard_error_of_sampled_averages(sizes: dict) -> None:
    import math

    acc = {"zero_shot": {"A": 0.5, "B": 0.2}, "finetuned": {"A": 0.9, "B": 0.8}, "ta": {"A": 0.7, "B": 0.6}}
    results = {"zero_shot": acc["zero_shot"], "finetuned": acc["finetuned"], "sample_sizes": sizes,
               "methods": {"task_arithmetic": {"test_acc": acc["ta"], "normalized": {"A": 0.7 / 0.9, "B": 0.75},
                                               "alpha": 0.3, "sar_avg": {"A": 0.5, "B": 0.5}}}}
    summary = summary_table(results)
    if not any(sizes.values()):
        assert "accuracy_se" not in summary  # full splits: the table stays as it was
        return
    for row, key in zip(summary.itertuples(), ("zero_shot", "finetuned", "ta")):
        terms = [p * (1 - p) / sizes[t] for t, p in acc[key].items() if sizes[t]]
        assert row.accuracy_se == pytest.approx(100 * math.sqrt(sum(terms)) / 2)
