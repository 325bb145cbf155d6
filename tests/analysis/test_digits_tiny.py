"""Integration: the report CLI end to end on the embedded "digits-tiny" zoo (built in seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_report_cli_on_digits_tiny(tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "analysis", "report", "--zoo", "digits-tiny", "--out", str(out),
           "--methods", "task_arithmetic,iso_cts", "--store", str(tmp_path / "r.sqlite")]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    tasks = results["tasks"]
    assert len(tasks) == 8 and list(results["methods"]) == ["task_arithmetic", "iso_cts"]
    assert all(0.0 <= results["finetuned"][t] <= 1.0 for t in tasks)
    iso = results["methods"]["iso_cts"]
    assert iso["alpha"] in [round(0.1 * i, 1) for i in range(1, 31)]
    assert set(iso["test_acc"]) == set(iso["sar_avg"]) == set(tasks)
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in iso["sar_avg"].values())
    assert "Iso-CTS" in proc.stdout and "fine-tuned" in proc.stdout and "Pearson r" in proc.stdout
    assert "%]" in proc.stderr  # progress was logged
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js inlined
