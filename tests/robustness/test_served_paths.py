"""Served mode (merging.paths): ISOSCOPE_ALLOWED_ROOTS confines every user-supplied path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from merging.errors import IsoscopeError, PathNotAllowedError
from merging.paths import ALLOWED_ROOTS_ENV, allowed_path


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    """served/models (allowed), served/data (allowed), private (not), with a secret and symlinks."""
    models, data, private = tmp_path / "served" / "models", tmp_path / "served" / "data", tmp_path / "private"
    for folder in (models, data, private):
        folder.mkdir(parents=True)
    secret = private / "secret.txt"
    secret.write_text("SECRET-CONTENT")
    (models / "ok.safetensors").write_bytes(b"x")
    (models / "escape").symlink_to(secret)
    (models / "escape_dir").symlink_to(private, target_is_directory=True)
    (private / "into_models").symlink_to(models, target_is_directory=True)
    (tmp_path / "served" / "models_evil").mkdir()  # shares the prefix "models"
    return {"models": models, "data": data, "private": private, "secret": secret, "root": tmp_path}


def _serve(monkeypatch: pytest.MonkeyPatch, *roots: Path | str) -> None:
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, os.pathsep.join(str(r) for r in roots))


def test_unset_means_local_use_everything_allowed_and_resolved(layout: dict[str, Path], monkeypatch) -> None:
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    assert allowed_path(layout["models"] / "escape") == layout["secret"]
    assert allowed_path(str(layout["models"] / ".." / "data")) == layout["data"]


def test_paths_inside_any_root_are_allowed(layout: dict[str, Path], monkeypatch) -> None:
    _serve(monkeypatch, layout["models"], layout["data"])
    assert allowed_path(layout["models"]) == layout["models"]
    assert allowed_path(layout["models"] / "ok.safetensors") == layout["models"] / "ok.safetensors"
    assert allowed_path(layout["data"] / "Task" / "val") == layout["data"] / "Task" / "val"
    assert allowed_path(layout["private"] / "into_models" / "ok.safetensors") == layout["models"] / "ok.safetensors"


@pytest.mark.parametrize("attempt", ["private", "secret", "dotdot", "symlink_file", "symlink_dir", "prefix", "root"])
def test_escapes_are_refused_without_showing_content_or_targets(layout: dict[str, Path], monkeypatch,
                                                                attempt: str) -> None:
    _serve(monkeypatch, layout["models"], layout["data"])
    path = {
        "private": layout["private"],
        "secret": layout["secret"],
        "dotdot": Path(f"{layout['models']}/../../private/secret.txt"),
        "symlink_file": layout["models"] / "escape",
        "symlink_dir": layout["models"] / "escape_dir" / "secret.txt",
        "prefix": layout["models"].parent / "models_evil",
        "root": Path("/"),
    }[attempt]
    with pytest.raises(PathNotAllowedError) as info:
        allowed_path(str(path))
    message = str(info.value)
    assert isinstance(info.value, IsoscopeError)
    assert message.startswith(str(path)) and ALLOWED_ROOTS_ENV in message
    assert "SECRET-CONTENT" not in message
    if attempt.startswith("symlink"):
        assert str(layout["private"]) not in message  # the resolved target is not revealed


def test_set_but_empty_allows_nothing(layout: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, "")
    with pytest.raises(PathNotAllowedError):
        allowed_path(layout["models"])


def test_odd_paths_are_refused_cleanly(layout: dict[str, Path], monkeypatch) -> None:
    _serve(monkeypatch, layout["models"])
    with pytest.raises(PathNotAllowedError, match="not a usable path"):
        allowed_path("bad\0name")
    loop = layout["models"] / "loop"
    loop.symlink_to(loop)
    with pytest.raises(PathNotAllowedError):  # a symlink loop resolves to nothing inside the roots
        allowed_path(loop / "x")
    with pytest.raises(PathNotAllowedError) as info:
        allowed_path("/etc/pass\nwd")
    assert "\n" not in str(info.value)


def test_relative_paths_and_tilde_resolve_before_the_check(layout: dict[str, Path], monkeypatch) -> None:
    _serve(monkeypatch, layout["models"])
    monkeypatch.chdir(layout["models"])
    assert allowed_path("ok.safetensors") == layout["models"] / "ok.safetensors"
    with pytest.raises(PathNotAllowedError):
        allowed_path("../data")
    monkeypatch.setenv("HOME", str(layout["private"]))
    with pytest.raises(PathNotAllowedError):
        allowed_path("~/secret.txt")


@pytest.mark.parametrize("ref", ["../../../private", "../../escape_dir", "/etc", "a/../../..", "x\x00y", "rev" * 100])
def test_hub_refs_main_never_leads_outside_the_snapshots(layout: dict[str, Path], monkeypatch, ref: str) -> None:
    """refs/main is file content: a revision name only, never joined as a path; what it names
    must still lie inside the roots. A hostile ref falls back to the snapshot that is there."""
    from zoo.layouts import snapshot_of

    repo = layout["models"] / "models--org--name"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(ref)
    _serve(monkeypatch, layout["models"], layout["data"])
    assert snapshot_of(repo) == repo / "snapshots" / "abc123"
    (repo / "snapshots" / "abc123").rmdir()
    (repo / "snapshots" / "link").symlink_to(layout["private"], target_is_directory=True)
    (repo / "refs" / "main").write_text("link")
    with pytest.raises(PathNotAllowedError):
        snapshot_of(repo)
