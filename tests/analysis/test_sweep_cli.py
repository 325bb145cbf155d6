"""The headless sweep CLI fills the result store the Common subspace view reads: after it runs,
the same sweep through an Evaluator evaluates nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.__main__ import parse_values
from merging.errors import IsoscopeError


def test_parse_values() -> None:
    assert parse_values("common_fraction=0:1:0.1") == ("common_fraction", [round(0.1 * i, 1) for i in range(11)])
    assert parse_values("rank_ratio=0.02, 0.5") == ("rank_ratio", [0.02, 0.5])
    for bad in ("common_fraction", "x=1:0:0.1", "x=0:1:0", "x=a,b"):
        with pytest.raises(IsoscopeError):
            parse_values(bad)


@pytest.mark.slow
def test_sweep_cli_fills_the_store_the_page_reads(tmp_path: Path) -> None:
    from analysis.evaluation import Evaluator
    from analysis.store import ResultStore
    from analysis.sweeps import param_sweep
    from zoo import load_zoo

    store = tmp_path / "results.sqlite"
    cmd = [sys.executable, "-m", "analysis", "sweep", "--zoo", "digits-tiny", "--method", "iso_cts",
           "--param", "common_fraction=0.5:1:0.5", "--alpha", "1.0", "--store", str(store)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "common_fraction = 0.5" in done.stdout and "common_fraction = 1" in done.stdout
    ev = Evaluator(load_zoo("digits-tiny"), store=ResultStore(store))
    table = param_sweep(ev, "iso_cts", "common_fraction", [0.5, 1.0], alpha=1.0)
    assert ev.evaluations == 0 and set(table["value"]) == {0.5, 1.0}

    bad = subprocess.run(cmd[:-4] + ["--param", "common_fraction=0:2:0.5"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: parameter common_fraction")


def test_sweep_cli_quick_mode_prints_standard_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from analysis.__main__ import main
    from analysis.store import ResultStore
    from tests.zoo.data_replicas import write_authors_location
    from tests.zoo.test_data_sources import write_folder

    write_folder(tmp_path / "ckpt", {"MNIST": 10, "SVHN": 10})
    write_authors_location(tmp_path / "data", ("MNIST", "SVHN"))
    store = tmp_path / "results.sqlite"
    args = ["sweep", "--zoo", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data"), "--method", "iso_cts",
            "--param", "common_fraction=0.5", "--alpha", "1.0", "--store", str(store), "--threads", "1"]
    assert main([*args, "--max-images", "6"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and " ± " in out and "at most 6 images per task and split" in out
    assert {row[-1] for row in ResultStore(store).rows()} == {6}  # the budget keys every stored point
    assert main(args) == 0  # the full splits: evaluated anew, printed without ±
    assert " ± " not in capsys.readouterr().out
    assert {row[-1] for row in ResultStore(store).rows()} == {0, 6}
    assert main(["sweep", "--zoo", "digits-tiny", "--method", "iso_cts", "--param", "common_fraction=1",
                 "--max-images", "5", "--store", str(store)]) == 2
    assert capsys.readouterr().err.startswith("error: an evaluation budget (max_images) applies to the data")
    with pytest.raises(SystemExit):
        main([*args, "--max-images", "0"])
