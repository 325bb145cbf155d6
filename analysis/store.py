"""The on-disk result store: every evaluated accuracy, keyed by what produced it.

One SQLite file under the cache directory ($ISOSCOPE_CACHE, default ~/.cache/isoscope). A row
is one point: (zoo fingerprint, method, canonical JSON of the resolved parameters, α, split,
task, evaluation budget) → top-1 accuracy. The budget is the quick mode's ``max_images`` (images
per task and split, a stratified sample; 0 = every image), so an accuracy measured on a sample
and one measured on the full split never answer for each other. Rows are written in short ``BEGIN IMMEDIATE`` transactions as soon as
they are computed, so a sweep killed at any moment (even SIGKILL) leaves every committed row
intact and resumes by skipping them. The journal is WAL (readers never block the writer, nor
the writer the readers) with ``synchronous=NORMAL``: a killed *process* loses nothing that was
committed; only a power cut may roll back the last few commits, never corrupt the file.
Connections are opened per call, so the store is safe to share across threads and processes.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from merging.paths import cache_root

log = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"
BUSY_TIMEOUT_MS = 30_000
SCHEMA_VERSION = 3  # 2: the ``layers`` table; 3: ``budget`` in the key of ``points``
FULL = 0  # the budget of an accuracy measured on every image
ALPHA_DIGITS = 6  # α is stored rounded, so 0.1 * 3 and 0.3 name the same point

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    fingerprint TEXT NOT NULL,
    method      TEXT NOT NULL,
    params      TEXT NOT NULL,
    alpha       REAL NOT NULL,
    split       TEXT NOT NULL,
    task        TEXT NOT NULL,
    budget      INTEGER NOT NULL,
    accuracy    REAL NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (fingerprint, method, params, alpha, split, task, budget)
) WITHOUT ROWID
"""
_COLUMNS = "fingerprint, method, params, alpha, split, task, accuracy, created, budget"  # rows() order

# Per-layer analysis results (analysis.decompositions): a few small arrays per (layer, method,
# parameters), stored as an .npz blob, so a revisit or a restart of the app recomputes nothing.
_LAYER_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    fingerprint TEXT NOT NULL,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    method      TEXT NOT NULL,
    params      TEXT NOT NULL,
    arrays      BLOB NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (fingerprint, kind, key, method, params)
) WITHOUT ROWID
"""


def canonical_params(params: Mapping[str, Any] | None) -> str:
    """Parameters as canonical JSON (sorted keys, no spaces, floats as Python writes them)."""
    clean = {k: (float(v) if isinstance(v, float) else v) for k, v in (params or {}).items()}
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def alpha_key(alpha: float) -> float:
    return round(float(alpha), ALPHA_DIGITS)


class ResultStore:
    """Accuracy of every evaluated point, persisted in SQLite (see module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_root() / STORE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            _migrate(con)
            con.execute(_SCHEMA)
            con.execute(_LAYER_SCHEMA)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA synchronous=NORMAL")
            yield con
        finally:
            con.close()

    def get(self, fingerprint: str, method: str, params: Mapping[str, Any] | None, alpha: float,
            split: str, tasks: list[str] | None = None, budget: int = FULL) -> dict[str, float]:
        """Stored accuracies {task: acc} of one point measured with ``budget`` images per task
        (``FULL``: every image); only the tasks already evaluated."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT task, accuracy FROM points WHERE fingerprint=? AND method=? AND params=? "
                "AND alpha=? AND split=? AND budget=?",
                (fingerprint, method, canonical_params(params), alpha_key(alpha), split, int(budget))).fetchall()
        found = dict(rows)
        return found if tasks is None else {t: found[t] for t in tasks if t in found}

    def put(self, fingerprint: str, method: str, params: Mapping[str, Any] | None, alpha: float,
            split: str, accuracies: Mapping[str, float], budget: int = FULL) -> None:
        """Commit one point's accuracies, measured with ``budget`` images per task, in one short
        transaction (first writer wins)."""
        now = time.time()
        rows = [(fingerprint, method, canonical_params(params), alpha_key(alpha), split, task, float(acc), now,
                 int(budget)) for task, acc in accuracies.items()]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(f"INSERT OR IGNORE INTO points ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        log.debug("stored %d row(s) for %s %s α=%s %s", len(rows), method, canonical_params(params), alpha, split)

    def get_layer(self, fingerprint: str, kind: str, key: str, method: str, params: str
                  ) -> dict[str, np.ndarray] | None:
        """The arrays stored for one per-layer result, or None (an unreadable blob counts as
        missing: it is recomputed and replaced)."""
        with self._connect() as con:
            row = con.execute("SELECT arrays FROM layers WHERE fingerprint=? AND kind=? AND key=? AND method=? "
                              "AND params=?", (fingerprint, kind, key, method, params)).fetchone()
        if row is None:
            return None
        try:
            with np.load(io.BytesIO(row[0]), allow_pickle=False) as blob:
                return {name: blob[name] for name in blob.files}
        except (ValueError, OSError, EOFError) as err:
            log.warning("ignoring an unreadable stored layer result %s %s %s: %s", kind, key, method, err)
            return None

    def put_layer(self, fingerprint: str, kind: str, key: str, method: str, params: str,
                  arrays: Mapping[str, np.ndarray]) -> None:
        """Store one per-layer result (deterministic values: a second writer replaces the first)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with self._connect() as con:
            con.execute("INSERT OR REPLACE INTO layers VALUES (?,?,?,?,?,?,?)",
                        (fingerprint, kind, key, method, params, buffer.getvalue(), time.time()))

    def rows(self, fingerprint: str | None = None) -> list[tuple]:
        """Every stored row (optionally of one zoo), oldest first: for inspection and tests."""
        query, args = f"SELECT {_COLUMNS} FROM points", ()
        if fingerprint is not None:
            query, args = query + " WHERE fingerprint=?", (fingerprint,)
        with self._connect() as con:
            return con.execute(query + " ORDER BY created", args).fetchall()

    def count(self, fingerprint: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM points", ()
        if fingerprint is not None:
            query, args = query + " WHERE fingerprint=?", (fingerprint,)
        with self._connect() as con:
            return int(con.execute(query, args).fetchone()[0])

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check of the file."""
        with self._connect() as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a store written before the ``budget`` column (schema 2) to schema 3: its rows were
    all measured on every image, so they keep their values with budget ``FULL``. One writer does
    it, inside an immediate transaction; the others find it done."""
    con.execute("BEGIN IMMEDIATE")
    try:
        columns = [row[1] for row in con.execute("PRAGMA table_info(points)")]
        if columns and "budget" not in columns:
            con.execute("ALTER TABLE points RENAME TO points_v2")
            con.execute(_SCHEMA)
            con.execute(f"INSERT INTO points ({_COLUMNS}) SELECT fingerprint, method, params, alpha, split, task, "
                        f"accuracy, created, {FULL} FROM points_v2")
            con.execute("DROP TABLE points_v2")
            log.info("result store upgraded to schema %d (budget in the key)", SCHEMA_VERSION)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
