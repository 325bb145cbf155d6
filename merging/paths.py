"""Served mode: which folders the app and the zoo loaders may read.

When the environment variable ``ISOSCOPE_ALLOWED_ROOTS`` is set (folders separated by
``os.pathsep``, e.g. ``/srv/models:/srv/data``), every user-supplied path goes through
``allowed_path``: it is resolved (``~``, ``..`` and every symlink) and refused unless the result
lies inside one of the roots. The refusal names only the path as the user typed it: never the
resolved target, never anything read from the file. When the variable is set but names no
folder, nothing is allowed (fail closed); when it is unset, every path is allowed (local use).
"""

from __future__ import annotations

from pathlib import Path

from merging import settings
from merging.errors import PathNotAllowedError, printable

ALLOWED_ROOTS_ENV = settings.SETTINGS["allowed_roots"].env
CACHE_ENV = settings.SETTINGS["cache_dir"].env


def cache_root() -> Path:
    """Isoscope's cache directory: $ISOSCOPE_CACHE, else ~/.cache/isoscope (zoo builds, result store)."""
    return settings.value("cache_dir")


def allowed_roots() -> list[Path] | None:
    """The resolved roots, or None when served mode is off (variable unset)."""
    return settings.value("allowed_roots")


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def allowed_path(path: str | Path) -> Path:
    """``path`` fully resolved; PathNotAllowedError if served mode is on and it escapes the roots."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as err:  # symlink loops, NUL bytes
        raise PathNotAllowedError(f"{_shown(path)}: not a usable path") from err
    roots = allowed_roots()
    if roots is not None and not _inside(resolved, roots):
        raise PathNotAllowedError(f"{_shown(path)}: outside the folders this server may read "
                                  f"(set by {ALLOWED_ROOTS_ENV}); pick a path inside them")
    return resolved


def _shown(path: str | Path) -> str:
    """The user's own path, made safe for a one-line message."""
    return printable(path, 200)
