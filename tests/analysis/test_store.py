"""The SQLite result store: keys, resume after SIGKILL, concurrent readers and one writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from analysis.store import ResultStore, canonical_params
from merging.paths import cache_root

ROOT = Path(__file__).resolve().parents[2]


def test_roundtrip_and_canonical_keys(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.put("fp", "iso_cts", {"common_fraction": 0.8, "b": 1}, 0.1 * 3, "val", {"A": 0.5, "B": 0.25})
    # same point: other key order, α written another way
    assert store.get("fp", "iso_cts", {"b": 1, "common_fraction": 0.8}, 0.3, "val") == {"A": 0.5, "B": 0.25}
    assert store.get("fp", "iso_cts", {"b": 1, "common_fraction": 0.8}, 0.3, "val", ["B", "C"]) == {"B": 0.25}
    assert store.get("fp", "iso_cts", {"b": 1, "common_fraction": 0.8}, 0.3, "test") == {}
    assert store.get("other", "iso_cts", {"b": 1, "common_fraction": 0.8}, 0.3, "val") == {}
    store.put("fp", "iso_cts", {"common_fraction": 0.8, "b": 1}, 0.3, "val", {"A": 0.9})  # first writer wins
    assert store.get("fp", "iso_cts", {"b": 1, "common_fraction": 0.8}, 0.3, "val")["A"] == 0.5
    assert store.count() == 2 and store.count("fp") == 2 and store.integrity_ok()
    assert canonical_params({"b": 1, "a": 0.5}) == '{"a":0.5,"b":1}'


def test_default_location_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert ResultStore().path == tmp_path / "c" / "results.sqlite"


WRITER = textwrap.dedent("""
    import sys, time
    from analysis.store import ResultStore
    store = ResultStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        if store.get("fp", "m", {"i": i}, 1.0, "test"):
            continue  # already stored: resume skips it
        store.put("fp", "m", {"i": i}, 1.0, "test", {"A": i / 1000, "B": -i / 1000})
        print(i, flush=True)
        time.sleep(float(sys.argv[3]))
""")


def _writer(path: Path, n: int, pause: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n), str(pause)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def test_resume_after_sigkill_loses_nothing_and_redoes_nothing(tmp_path: Path) -> None:
    path, n = tmp_path / "r.sqlite", 60
    proc = _writer(path, n, 0.01)
    written = [int(proc.stdout.readline()) for _ in range(15)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ResultStore(path)
    assert store.integrity_ok()
    before = store.count()
    assert before >= 2 * len(written)  # every point printed as done is stored, both rows
    resumed = _writer(path, n, 0.0)
    redone = [int(line) for line in resumed.stdout]
    assert resumed.wait() == 0
    assert redone == list(range(before // 2, n))  # no point written twice, none skipped
    rows = store.rows("fp")
    assert len(rows) == 2 * n and store.integrity_ok()
    assert sorted(r[6] for r in rows if r[5] == "A") == pytest.approx([i / 1000 for i in range(n)])


def test_concurrent_readers_and_one_writer(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            last = 0
            while not done.is_set():
                count = store.count()
                assert count >= last  # committed rows never disappear
                last = count
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    proc = _writer(store.path, 40, 0.0)
    assert proc.wait(timeout=60) == 0
    done.set()
    for t in threads:
        t.join()
    assert not errors and store.count() == 80 and store.integrity_ok()


def test_sampled_and_full_accuracies_never_mix(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.put("fp", "ta", {}, 0.3, "test", {"A": 0.5})  # full split (budget 0)
    store.put("fp", "ta", {}, 0.3, "test", {"A": 0.75}, budget=200)
    assert store.get("fp", "ta", {}, 0.3, "test") == {"A": 0.5}
    assert store.get("fp", "ta", {}, 0.3, "test", budget=200) == {"A": 0.75}
    assert store.get("fp", "ta", {}, 0.3, "test", budget=100) == {}
    assert sorted(r[-1] for r in store.rows()) == [0, 200] and store.integrity_ok()


def test_a_store_written_before_budgets_is_migrated_as_full(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE points (fingerprint TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL, "
                "alpha REAL NOT NULL, split TEXT NOT NULL, task TEXT NOT NULL, accuracy REAL NOT NULL, "
                "created REAL NOT NULL, PRIMARY KEY (fingerprint, method, params, alpha, split, task)) WITHOUT ROWID")
    con.execute("INSERT INTO points VALUES ('fp', 'ta', '{}', 0.3, 'test', 'A', 0.625, 1.0)")
    con.execute("PRAGMA user_version=2")
    con.commit()
    con.close()
    store = ResultStore(path)
    assert store.rows() == [("fp", "ta", "{}", 0.3, "test", "A", 0.625, 1.0, 0)]
    assert store.get("fp", "ta", {}, 0.3, "test") == {"A": 0.625} and store.get("fp", "ta", {}, 0.3, "test", budget=5) == {}
    assert ResultStore(path).rows() == store.rows() and store.integrity_ok()  # opening again changes nothing
