"""The entry points' huge-page decision, from the kernel's THP modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from merging import runtime

MODES = ("always", "madvise", "never")
DEFRAGS = ("always", "defer", "defer+madvise", "madvise", "never")


def fake_sysfs(root: Path, enabled: str, defrag: str) -> Path:
    """A THP sysfs folder the way the kernel writes it: every choice, the selected one bracketed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "enabled").write_text(" ".join(f"[{m}]" if m == enabled else m for m in MODES) + "\n")
    (root / "defrag").write_text(" ".join(f"[{d}]" if d == defrag else d for d in DEFRAGS) + "\n")
    return root


@pytest.mark.parametrize("enabled", MODES)
@pytest.mark.parametrize("defrag", DEFRAGS)
def test_huge_pages_are_asked_for_only_where_madvised_faults_never_compact(tmp_path: Path, enabled: str,
                                                                           defrag: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_sysfs(tmp_path / "thp", enabled, defrag)
    assert runtime.kernel_mode("enabled", root) == enabled and runtime.kernel_mode("defrag", root) == defrag
    monkeypatch.delenv(runtime.HUGE_PAGES_ENV, raising=False)
    wanted = enabled == "madvise" and defrag in ("defer", "never")
    assert runtime.use_huge_pages(root) is wanted
    assert runtime.os.environ[runtime.HUGE_PAGES_ENV] == ("1" if wanted else "0")


def test_the_environment_wins_and_a_missing_sysfs_asks_for_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_sysfs(tmp_path / "thp", "madvise", "defer")
    monkeypatch.setenv(runtime.HUGE_PAGES_ENV, "0")
    assert runtime.use_huge_pages(root) is False  # the user's 0 stands on a kernel where 1 would help
    monkeypatch.delenv(runtime.HUGE_PAGES_ENV)
    assert runtime.kernel_mode("enabled", tmp_path / "absent") is None
    assert runtime.use_huge_pages(tmp_path / "absent") is False
