"""Shipped results: an asset written from a store seeds an empty store once, keeps what a user
already has, refuses another zoo, engine version or schema, survives a damaged file; and the
embedded zoo's shipped asset equals a fresh computation on a sample of its rows."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from analysis import seed
from analysis.evaluation import Evaluator
from analysis.seed import RESULT_VERSION, export_seed, seed_store
from analysis.store import ResultStore
from tests.analysis.synthetic import SyntheticZoo


class ShippedZoo(SyntheticZoo):
    """A synthetic zoo that ships an asset, as the embedded digits zoo does."""

    def __init__(self, asset: Path | None) -> None:
        super().__init__()
        self.results_asset = asset


@pytest.fixture
def filled(tmp_path: Path) -> tuple[ResultStore, Evaluator]:
    """A store holding one zoo's report-like points and layers, plus another zoo's row."""
    store = ResultStore(tmp_path / "filled.sqlite")
    ev = Evaluator(ShippedZoo(None), store=store)
    ev.table("iso_c", None, None, ("val", "test"))  # α on validation: val rows for the grid, then test
    ev.decompositions.merged_layer(ev.decompositions.keys[0], "iso_c")
    store.put("another-zoo", "task_arithmetic", {}, 1.0, "test", {"A": 0.5})
    return store, ev


def _rows(path: Path, table: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as con:
        columns = [c[1] for c in con.execute(f"PRAGMA table_info({table})") if c[1] != "created"]
        return sorted(con.execute(f"SELECT {','.join(columns)} FROM {table}").fetchall())


def test_an_asset_seeds_an_empty_store_once_and_serves_without_evaluating(filled, tmp_path: Path) -> None:
    store, ev = filled
    asset = tmp_path / "asset.sqlite"
    counts = export_seed(store, ev.fingerprint, asset)
    assert counts["points"] == store.count(ev.fingerprint) > 0 and counts["layers"] >= 1
    assert all(r[0] == ev.fingerprint for r in _rows(asset, "points"))  # the other zoo's row is left out
    fresh = ResultStore(tmp_path / "fresh.sqlite")
    zoo = ShippedZoo(asset)
    again = Evaluator(zoo, store=fresh)  # seeds on creation
    assert _rows(fresh.path, "points") == _rows(asset, "points")
    assert _rows(fresh.path, "layers") == _rows(asset, "layers")
    table = again.table("iso_c", None, None, ("val", "test"))
    assert again.evaluations == 0 and zoo.calls == []  # every accuracy came from the shipped rows
    assert table[0].equals(ev.table("iso_c", None, None, ("val", "test"))[0])
    assert seed_store(fresh, ev.fingerprint, asset) == 0  # once per store, fingerprint and version


def test_seeding_keeps_a_users_rows(filled, tmp_path: Path) -> None:
    store, ev = filled
    asset = tmp_path / "asset.sqlite"
    export_seed(store, ev.fingerprint, asset)
    mine = ResultStore(tmp_path / "mine.sqlite")
    point = _rows(asset, "points")[0]  # (fingerprint, method, params, alpha, split, task, accuracy)
    mine.put(point[0], point[1], json.loads(point[2]), point[3], point[4], {point[5]: 0.123})
    added = seed_store(mine, ev.fingerprint, asset)
    assert added == len(_rows(asset, "points")) + len(_rows(asset, "layers")) - 1
    assert mine.get(point[0], point[1], json.loads(point[2]), point[3], point[4])[point[5]] == 0.123


@pytest.mark.parametrize("change", ["fingerprint", "version", "schema", "damaged"])
def test_an_asset_for_another_zoo_engine_or_schema_is_ignored(change: str, filled, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store, ev = filled
    asset = tmp_path / "asset.sqlite"
    export_seed(store, ev.fingerprint, asset)
    fingerprint = ev.fingerprint
    if change == "fingerprint":
        fingerprint = "another-zoo"
    elif change == "version":
        monkeypatch.setattr(seed, "RESULT_VERSION", RESULT_VERSION + 1)
    elif change == "schema":
        with closing(sqlite3.connect(asset)) as con:
            con.execute("UPDATE seed SET schema = schema + 1")
            con.commit()
    else:
        asset.write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)
    fresh = ResultStore(tmp_path / "fresh.sqlite")
    with caplog.at_level(logging.INFO, logger="analysis.seed"):
        assert seed_store(fresh, fingerprint, asset) == 0
    assert fresh.count() == 0 and "not seeding" in caplog.text


def test_seeding_can_be_switched_off(filled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, ev = filled
    asset = tmp_path / "asset.sqlite"
    export_seed(store, ev.fingerprint, asset)
    monkeypatch.setenv("ISOSCOPE_SEED_RESULTS", "0")
    fresh = ResultStore(tmp_path / "fresh.sqlite")
    Evaluator(ShippedZoo(asset), store=fresh)
    assert fresh.count() == 0


SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "zoo" / "digits-results.sqlite"


def _sample(rows: list[tuple], n: int) -> list[tuple]:
    """``n`` rows picked by a hash of their key (stable, spread over methods and splits)."""
    return sorted(rows, key=lambda r: hashlib.sha256(repr(r[:5]).encode()).hexdigest())[:n]


@pytest.mark.slow
def test_the_shipped_results_equal_a_fresh_computation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asset is the current engine's on the current zoo: its fingerprint and version match, and a
    sample of its accuracies and per-layer results recomputed from scratch are equal."""
    from zoo import load_zoo

    assert SHIPPED.is_file(), "assets/zoo/digits-results.sqlite is missing: run make build-zoo"
    monkeypatch.setenv("ISOSCOPE_SEED_RESULTS", "0")
    zoo = load_zoo("digits", device="cpu")
    assert zoo.results_asset == SHIPPED
    with closing(sqlite3.connect(SHIPPED)) as con:
        meta = con.execute("SELECT fingerprint, version FROM seed").fetchone()
        layers = con.execute("SELECT kind, key, method, params, arrays FROM layers").fetchall()
    assert meta == (zoo.fingerprint, RESULT_VERSION), "the shipped results are stale: run make build-zoo"
    ev = Evaluator(zoo, store=ResultStore(tmp_path / "empty.sqlite"))
    with closing(sqlite3.connect(SHIPPED)) as con:
        points = con.execute("SELECT method, params, alpha, split, task, accuracy FROM points "
                             "WHERE budget = 0").fetchall()
    for row in _sample(points, 4):
        method, params, alpha, split, task, accuracy = row
        if method.startswith("_"):  # zero-shot and fine-tuned references
            continue
        got = ev.accuracy(method, json.loads(params), alpha, split)[task]
        assert got == accuracy, row
    for kind, key, method, params, blob in _sample(layers, 2):
        with np.load(io.BytesIO(blob)) as shipped:
            want = {name: shipped[name] for name in shipped.files}
        got = _recompute_layer(ev, kind, key, method, params)
        assert set(got) == set(want) and all(np.array_equal(got[n], want[n]) for n in want), (kind, key, method)


def _recompute_layer(ev: Evaluator, kind: str, key: str, method: str, params: str) -> dict[str, np.ndarray]:
    """The per-layer result ``kind`` computed afresh (the evaluator's store is empty)."""
    from dataclasses import fields

    from analysis.decompositions import SUM_BASIS, MergedSpectrum, TaskGram

    dec = ev.decompositions
    values = json.loads(params) if params else {}
    alpha = values.pop("alpha", None)
    compute = {
        "spectra": lambda: dec.spectra(key),
        "norms": lambda: dec._compute_norms(key),
        "gram": lambda: TaskGram(gram=dec.gram(key)),
        "mspec": lambda: MergedSpectrum(s=dec.merged_spectrum(key, method, values, alpha)),
        "merged": lambda: dec._sum_basis(key) if method == SUM_BASIS else dec.merged_layer(key, method, values, alpha),
    }[kind]
    result = compute()
    return {f.name: getattr(result, f.name) for f in fields(result)}


def test_a_memory_store_is_never_seeded(filled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster worker's in-memory store stays empty (its driver's file store is the one seeded), and
    nothing is written in the working folder."""
    from analysis.store import MemoryStore

    store, ev = filled
    asset = tmp_path / "asset.sqlite"
    export_seed(store, ev.fingerprint, asset)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert seed_store(MemoryStore(), ev.fingerprint, asset) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
