"""The sidebar's data field on the authors' data location, and the evaluation budget (quick mode):
the layout is named, and sampled accuracies show their standard error beside them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.app.conftest import assert_clean, open_page
from tests.zoo.data_replicas import write_authors_location
from tests.zoo.test_data_sources import write_folder

pytestmark = pytest.mark.slow


def test_authors_location_with_a_budget(tmp_path: Path) -> None:
    write_folder(tmp_path / "ckpt", {"MNIST": 10, "Cars": 3})
    write_authors_location(tmp_path / "data", ("MNIST", "Cars"))
    at = open_page()
    at.radio(key="iso_zoo_source").set_value("Folder of checkpoints").run()
    at.text_input(key="iso_zoo_path").input(str(tmp_path / "ckpt")).run()
    at.text_input(key="iso_data_path").input(str(tmp_path / "data")).run()
    at.number_input(key="iso_max_images").set_value(7).run()
    at.radio(key="iso_alpha_mode").set_value("Fixed (slider)").run()  # one α: no validation search
    assert_clean(at)
    at.switch_page("pages/merge_export.py").run()
    assert_clean(at)
    assert "Evaluation data: **the authors' data location**" in " ".join(c.value for c in at.caption)
    table = at.dataframe[0].value
    se = dict(zip(table["task"], table["se"]))
    accuracy = dict(zip(table["task"], table["accuracy"]))
    assert se["MNIST"] == pytest.approx(math.sqrt(accuracy["MNIST"] * (1 - accuracy["MNIST"]) / 7))
    assert math.isnan(se["Cars"])  # 5 test images: the budget covers the whole split
    assert any("stratified sample of at most 7 images" in c.value for c in at.caption)
    assert "±" in at.metric[0].value
