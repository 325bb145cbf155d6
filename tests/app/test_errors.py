"""Errors a user can cause appear in place, with what to do, and the app keeps running; a
checkpoint folder without data keeps the weight-space views and says what accuracy needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from merging.io import save_safetensors
from tests.app.conftest import assert_clean, chart, open_page

pytestmark = pytest.mark.slow


def _folder(at: AppTest, path: str | Path, trust: bool = False) -> AppTest:
    at.radio(key="iso_zoo_source").set_value("Folder of checkpoints").run()
    at.text_input(key="iso_zoo_path").input(str(path)).run()
    if trust:
        at.checkbox(key="iso_trust_pickle").check().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _messages(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.error, *at.warning, *at.info])


def test_missing_folder_is_reported_in_place(tmp_path: Path) -> None:
    at = _folder(open_page(), tmp_path / "nowhere")
    assert "is not a folder" in _messages(at)
    assert "Type the path of a checkpoint folder" in _messages(at)  # the page waits, it does not crash
    at.radio(key="iso_zoo_source").set_value("Embedded digits zoo").run()
    assert_clean(at)
    assert chart(at, "iso_overview_cos")  # back to normal


def test_path_outside_allowed_roots_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOSCOPE_ALLOWED_ROOTS", str(tmp_path))
    at = _folder(open_page(), "/etc")
    assert "outside the folders this server may read" in _messages(at)


def test_pickles_the_code_free_reader_cannot_interpret_are_refused_until_trusted(tmp_path: Path) -> None:
    import datetime

    for name in ("pretrained", "a", "b"):
        torch.save({"w": torch.ones(2), "when": datetime.date(2020, 1, 1)}, tmp_path / f"{name}.pt")
    at = _folder(open_page(), tmp_path)
    errors = " ".join(e.value for e in at.error)
    assert "pickled Python object" in errors and "cannot interpret" in errors and "Trust these files" in errors


def test_a_release_without_theta0_takes_the_pretrained_file_field(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A TALL-masks folder without its zero-shot model: the error names the sidebar field; typing
    θ0's file there opens the zoo, and the sidebar says where θ0 came from."""
    import zoo

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    tiny = zoo.load_zoo("digits-tiny")
    for task in tiny.tasks[:2]:
        (tmp_path / "tall" / "ViT-T" / f"{task}Val").mkdir(parents=True)
        torch.save({f"model.visual.{k}": v for k, v in tiny.finetuned(task).items()},
                   tmp_path / "tall" / "ViT-T" / f"{task}Val" / "nonlinear_finetuned.pt")
    theta0 = tmp_path / "theta0.pt"
    torch.save({f"model.visual.{k}": v for k, v in tiny.pretrained().items()}, theta0)
    at = _folder(open_page(), tmp_path / "tall")
    assert "no zero-shot model" in _messages(at) and "Pretrained model file" in _messages(at)
    at.text_input(key="iso_pretrained_path").input(str(theta0)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(chart(at, "iso_overview_cos")["data"][0]["x"]) == 2
    at.run()  # the sidebar shows the loaded zoo's notes
    assert f"θ0 (zero-shot model): {theta0}" in " ".join(c.value for c in at.caption)


def test_trusted_torch_files_convert_once_to_safetensors(tmp_path: Path) -> None:
    """On a folder of .pt files the sidebar offers a one-time conversion (no trust needed: the
    files are read without running code): it writes `<folder>-safetensors`, switches the app to
    it, and a second conversion to the same place is refused in place instead of overwriting."""
    import zoo

    tiny = zoo.load_zoo("digits-tiny")
    src = tmp_path / "torch"
    src.mkdir()
    torch.save(tiny.pretrained(), src / "pretrained.pt")
    for task in tiny.tasks[:2]:
        torch.save(tiny.finetuned(task), src / f"{task}.pt")
    at = _folder(open_page(), src)
    at.button(key="iso_convert_folder").click().run()
    assert not at.exception, [e.value for e in at.exception]
    out = tmp_path / "torch-safetensors"
    assert at.text_input(key="iso_zoo_path").value == str(out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        ["pretrained.safetensors"] + [f"{t}.safetensors" for t in tiny.tasks[:2]])
    assert "Detected layout: **plain**" in " ".join(c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "iso_convert_folder"]  # nothing left to convert
    assert len(chart(at, "iso_overview_cos")["data"][0]["x"]) == 2
    again = _folder(open_page(), src)
    again.button(key="iso_convert_folder").click().run()
    assert "already exists" in _messages(again) and not again.exception


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-tiny's θ0 and three θt as plain safetensors files, with no data and no heads."""
    import zoo

    tiny = zoo.load_zoo("digits-tiny")
    out = tmp_path_factory.mktemp("plain")
    save_safetensors(tiny.pretrained(), out / "pretrained.safetensors")
    for task in tiny.tasks[:3]:
        save_safetensors(tiny.finetuned(task), out / f"{task}.safetensors")
    return out


def test_folder_without_data_keeps_weight_views(plain_folder: Path) -> None:
    at = _folder(open_page(), plain_folder)
    assert "Detected layout: **plain**" in " ".join(c.value for c in at.caption)
    assert "needs a data folder" in _messages(at) or "no evaluation data" in _messages(at)
    assert len(chart(at, "iso_overview_cos")["data"][0]["x"]) == 3  # geometry still shown
    at.switch_page("pages/spectra.py").run()
    assert_clean(at)
    assert chart(at, "iso_spectra_fig")["data"]
    at.switch_page("pages/common_subspace.py").run()
    assert not at.exception and "needs evaluation data" in _messages(at)
    at.switch_page("pages/merge_export.py").run()
    assert not at.exception and "cannot be scored" in _messages(at)
    assert any(b.key == "iso_dl_model" for b in at.get("download_button"))
