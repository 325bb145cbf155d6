"""Shipped results for the embedded zoo: a fresh clone answers at once.

The digits zoo is deterministic, so everything its pages compute on a first visit (the report's
points, both default sweeps with α on validation, the per-layer spectra and projections) can be
computed once and shipped. The asset is a small SQLite file with the result store's own tables,
holding only that zoo's rows, and a ``seed`` table naming the zoo fingerprint, the engine's
result version (``RESULT_VERSION``) and the store's schema it was written with.

``seed_store`` copies the asset's rows into a user's store the first time that store meets the
zoo (``INSERT OR IGNORE``: a row the user already has is kept), and records it in the store's own
``seeds`` table, so it runs once per store, fingerprint and version. An asset written for
another fingerprint, result version or schema is ignored, with a log line: the pages then compute
as they would without it. ``export_seed`` writes an asset from a filled store; ``ui/seed.py``
fills one by running the report, the sweeps and every page, and ``make build-zoo`` runs it.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from analysis.store import SCHEMA_VERSION, ResultStore

log = logging.getLogger(__name__)

# Bump when the engine's numbers change (a method, a kernel's result, the evaluation), so that
# results computed by an older engine are never served as this one's.
RESULT_VERSION = 1
TABLES = ("points", "layers")
_SEEDS = ("CREATE TABLE IF NOT EXISTS seeds (fingerprint TEXT NOT NULL, version INTEGER NOT NULL, "
          "rows INTEGER NOT NULL, PRIMARY KEY (fingerprint, version))")


def export_seed(store: ResultStore, fingerprint: str, out: str | Path) -> dict[str, int]:
    """Write ``fingerprint``'s rows of ``store`` into a new asset ``out`` (replaced atomically);
    the number of rows per table."""
    out = Path(out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    counts = {}
    with closing(sqlite3.connect(tmp)) as con:
        con.execute("ATTACH DATABASE ? AS src", (str(store.path),))
        for table in TABLES:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table} WHERE fingerprint=? ORDER BY 1,2,3,4,5",
                        (fingerprint,))
            counts[table] = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        con.execute("UPDATE points SET created=0")
        con.execute("UPDATE layers SET created=0")  # byte-stable across rebuilds
        con.execute("CREATE TABLE seed (fingerprint TEXT, version INTEGER, schema INTEGER)")
        con.execute("INSERT INTO seed VALUES (?,?,?)", (fingerprint, RESULT_VERSION, SCHEMA_VERSION))
        con.commit()
        con.execute("DETACH DATABASE src")
        con.execute("VACUUM")
    tmp.replace(out)
    log.info("wrote %s: %s", out, ", ".join(f"{n} {t}" for t, n in counts.items()))
    return counts


def seed_store(store: ResultStore, fingerprint: str, asset: str | Path | None) -> int:
    """Copy the asset's rows for ``fingerprint`` into ``store`` once; the rows added (0 when there is
    no usable asset, or it was copied before)."""
    if asset is None or not Path(asset).is_file() or not isinstance(store, ResultStore):
        return 0  # a cluster worker's MemoryStore is not seeded: its driver's store is
    with closing(sqlite3.connect(Path(store.path).resolve().as_uri(), uri=True, timeout=30,
                                 isolation_level=None)) as con:
        con.execute(_SEEDS)
        if con.execute("SELECT 1 FROM seeds WHERE fingerprint=? AND version=?",
                       (fingerprint, RESULT_VERSION)).fetchone():
            return 0
        try:
            added = _copy(con, fingerprint, Path(asset))
        except sqlite3.DatabaseError as err:  # a damaged or foreign asset: compute as without it
            log.warning("not seeding from %s: %s", asset, err)
            return 0
    if added:
        log.info("seeded the result store with %d rows of %s", added, asset)
    return added


def _copy(con: sqlite3.Connection, fingerprint: str, asset: Path) -> int:
    """The rows of ``asset`` (attached read-only) copied into ``con``'s store, in one transaction."""
    con.execute("ATTACH DATABASE ? AS seed", (asset.resolve().as_uri() + "?mode=ro",))
    try:
        meta = con.execute("SELECT fingerprint, version, schema FROM seed.seed").fetchone()
        if meta != (fingerprint, RESULT_VERSION, SCHEMA_VERSION):
            log.info("not seeding from %s: written for %s, this zoo, engine and store are %s", asset, meta,
                     (fingerprint, RESULT_VERSION, SCHEMA_VERSION))
            return 0
        before = con.total_changes
        con.execute("BEGIN IMMEDIATE")
        try:
            for table in TABLES:
                con.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM seed.{table} WHERE fingerprint=?",
                            (fingerprint,))
            added = con.total_changes - before
            con.execute("INSERT OR REPLACE INTO seeds VALUES (?,?,?)", (fingerprint, RESULT_VERSION, added))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return added
    finally:
        con.execute("DETACH DATABASE seed")
