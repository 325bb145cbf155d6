"""Every setting Isoscope reads from outside, in one table: budgets, paths, environment variables.

Each ``Setting`` names its environment variable, its default and what it bounds; ``value(name)``
reads the variable at call time (so a test or a deployment can set it), falls back to the default
when it is unset or empty, and logs once and falls back when it cannot be parsed. docs/settings.md
carries the same table, written by ``python -m merging.settings`` and checked against this module
by a test, so the two cannot drift.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIB = 2 ** 20


def _mib(text: str) -> int:
    """Megabytes (MiB, fractions allowed) as bytes; must be positive."""
    value = float(text)
    if not value > 0:
        raise ValueError("must be positive")
    return int(value * MIB)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _text(text: str) -> str:
    return text.strip()


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _roots(text: str) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in text.split(os.pathsep) if p.strip()]


@dataclass(frozen=True)
class Setting:
    """One setting: its variable, its default (already parsed) and how a value is parsed."""

    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    shown_default: str  # the default as the docs write it
    what: str  # one line: what it sets or bounds
    empty_means_unset: bool = True  # ISOSCOPE_ALLOWED_ROOTS="" is meaningful (nothing allowed)


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("cache_dir", "ISOSCOPE_CACHE", Path.home() / ".cache" / "isoscope", _path, "~/.cache/isoscope",
            "the cache folder: zoo builds, the result store, zero-shot heads built from text towers"),
    Setting("allowed_roots", "ISOSCOPE_ALLOWED_ROOTS", None, _roots, "unset (every path)",
            "served mode: the only folders user-given paths may resolve into (separated by the OS path "
            "separator); set but empty allows nothing", empty_means_unset=False),
    Setting("device", "ISOSCOPE_DEVICE", "", _text, "auto (CUDA when present, else CPU)",
            "the device merges and evaluations run on: cpu, cuda, cuda:N or auto"),
    Setting("zoo", "ISOSCOPE_ZOO", "digits", _text, "digits",
            "the zoo the app opens first: digits, digits-tiny or a checkpoint folder"),
    Setting("layer_cache", "ISOSCOPE_LAYER_CACHE_MB", 512 * MIB, _mib, "512",
            "MiB of per-key task vectors and decompositions the merge engine keeps (LRU)"),
    Setting("result_cache", "ISOSCOPE_RESULT_CACHE_MB", 256 * MIB, _mib, "256",
            "MiB of per-layer spectra and projections kept in memory (a ViT-B/32 layer's are ~50 KB)"),
    Setting("update_cache", "ISOSCOPE_UPDATE_CACHE_MB", 768 * MIB, _mib, "768",
            "MiB of whole merged updates (base and Δ) an evaluator keeps for an α search; a larger model streams"),
    Setting("stream_chunk", "ISOSCOPE_STREAM_CHUNK_ELEMENTS", 4 * MIB, _positive_int, "4194304",
            "parameters read per pass over the files in a streaming merge (bounds the mapped pages)"),
    Setting("max_header", "ISOSCOPE_MAX_HEADER_MB", 16 * MIB, _mib, "16",
            "largest safetensors header read (real ones are under ~1 MB; parsing costs ~10× the size)"),
    Setting("max_pickle", "ISOSCOPE_MAX_PICKLE_MB", 4 * MIB, _mib, "4",
            "largest pickle part of a torch file read without running code (real ones: ~100 KB)"),
    Setting("seed_results", "ISOSCOPE_SEED_RESULTS", True, lambda t: t.strip().lower() not in ("0", "false", "no"),
            "1", "whether a store meeting the embedded zoo first copies its shipped results (0: compute everything)"),
    Setting("view_cache_entries", "ISOSCOPE_VIEW_CACHE_ENTRIES", 64, _positive_int, "64",
            "entries each of the app's derived-table caches keeps (st.cache_data max_entries)"),
    Setting("view_cache_ttl", "ISOSCOPE_VIEW_CACHE_TTL_S", 3600, _positive_int, "3600",
            "seconds an entry of the app's derived-table caches lives (st.cache_data ttl)"),
)}

_warned: set[tuple[str, str]] = set()


def value(name: str) -> Any:
    """The setting ``name`` now: its environment variable parsed, else its default."""
    setting = SETTINGS[name]
    raw = os.environ.get(setting.env)
    if raw is None or (setting.empty_means_unset and not raw.strip()):
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as err:
        if (setting.env, raw) not in _warned:
            _warned.add((setting.env, raw))
            log.warning("%s=%r is not usable (%s); using the default %s", setting.env, raw, err,
                        setting.shown_default)
        return setting.default


def markdown_table() -> str:
    """The table docs/settings.md carries (one row per setting, in this module's order)."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {s.shown_default} | {s.what} |" for s in SETTINGS.values()]
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the docs table
    print(markdown_table())
