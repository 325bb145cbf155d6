"""The peer benchmark's pure parts: no peer is installed or run here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import peers
from benchmarks.merge_speed import cli_lines
from benchmarks.peers import ISOSCOPE, Peer, Run


def test_schedule_runs_every_configuration_once_per_repetition_reversing_every_other() -> None:
    configs = [("isoscope", "ties"), ("fusion_bench", "ties"), ("mergekit", "ties")]
    got = peers.schedule(configs, 3)
    assert [(i, m) for _, i, m in got[:3]] == configs
    assert [(i, m) for _, i, m in got[3:6]] == configs[::-1]
    assert [(i, m) for _, i, m in got[6:]] == configs and [r for r, _, _ in got] == [0] * 3 + [1] * 3 + [2] * 3


def test_table_reports_medians_ratios_and_the_fastest_peer() -> None:
    fb, mk = Peer("fusion_bench", "FusionBench", "x", ()), Peer("mergekit", "mergekit", "y", ())
    runs = {
        (ISOSCOPE, "ties"): [Run(2.0, 1.0), Run(4.0, 1.5), Run(3.0, 1.2)],  # median 3.0, peak 1.5
        ("fusion_bench", "ties"): [Run(over_gb=8.0)],
        ("mergekit", "ties"): [Run(12.0, 2.0), Run(error="exit 1")],
        (ISOSCOPE, "iso_c"): [Run(2.0, 1.0)],
        ("fusion_bench", "iso_c"): [Run(5.0, 3.0)],
    }
    results = {key: peers.median_run(value) for key, value in runs.items()}
    rows = peers.table(results, {("mergekit", "ties"): 0.68, ("fusion_bench", "iso_c"): 2e-6}, [fb, mk],
                       ["ties", "iso_c", "tsv_m"])
    cells = {row.split(" | ")[0].strip("| "): [c.strip(" |") for c in row.split(" | ")] for row in rows[2:]}
    assert cells["ties"][1:4] == ["3.00 s (1.5 GB)", "over 8 GB", "12.00 s (2.0 GB)"]
    assert cells["ties"][4:] == ["—", "6.8e-01", "—", "4.00×", "**4.00×**"]
    assert cells["iso_c"][2:4] == ["5.00 s (3.0 GB)", "—"] and cells["iso_c"][-1] == "**2.50×**"
    assert cells["tsv_m"][1] == "—" and cells["tsv_m"][-1] == "—"


def test_parse_run_reads_the_json_line_or_says_why_there_is_none() -> None:
    good = peers.parse_run(0, 'noise\n{"seconds": 1.5, "peak_rss_gb": 2.0, "routes": {"8x8": {"krylov": 2}}}\n', "")
    assert (good.seconds, good.peak_gb, good.routes) == (1.5, 2.0, {"8x8": {"krylov": 2}})
    assert peers.parse_run(3, '{"unsupported": "no"}', "").error == "no such method"
    assert peers.parse_run(1, "", "Traceback\nRuntimeError: boom\n").error == "RuntimeError: boom"
    lapack = "Traceback\n  File x\ntorch._C._LinAlgError: linalg.svd: failed to converge (error code:\n1).\n"
    assert peers.parse_run(1, "", lapack).error == "torch._C._LinAlgError: linalg.svd: failed to converge (error code: 1)."
    assert peers.parse_run(-9, "", "").error == "exit -9"


def test_relative_difference_is_over_the_update_from_the_base() -> None:
    pre = {"a": torch.ones(3), "b": torch.zeros(2, 2)}
    ours = {"a": torch.tensor([1.0, 1.0, 4.0]), "b": torch.tensor([[4.0, 0.0], [0.0, 0.0]])}  # Δ norm 5
    theirs = {"a": torch.tensor([1.0, 1.0, 4.0]), "b": torch.tensor([[4.0, 0.0], [0.0, 0.5]])}
    assert peers.relative_difference(pre, ours, theirs) == pytest.approx(0.1)
    assert peers.relative_difference(pre, ours, ours) == 0.0


def test_a_peer_that_cannot_be_installed_is_skipped_with_the_reason(tmp_path: Path) -> None:
    calls = []

    def failing(cmd, **_kwargs):  # noqa: ANN001, ANN003 - subprocess.run's signature
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").touch()
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for peer==9\n")

    peer = Peer("peer", "Peer", "peer==9", ("ties",))
    python, why = peers.ensure_venv(peer, tmp_path, run=failing)
    assert python is None and why == "ERROR: No matching distribution found for peer==9"
    assert calls[1][-2:] == list(peers.TORCH_PIN)  # the torch pin goes in first


def test_cli_lines_give_each_side_as_a_ratio_of_the_reference() -> None:
    lines = cli_lines({"reference": 30.0, "engine": 4.0, "cli": 10.0}, 3, 8)
    assert lines[0].endswith("30.00 s")
    assert "7.50×" in lines[1] and "engine" in lines[1] and "3.00×" in lines[2] and "cli" in lines[2]
