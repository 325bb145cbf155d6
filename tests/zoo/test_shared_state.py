"""Objects every browser session shares (one FolderZoo, its data, the digits zoo) fill their caches
lazily from many threads: each value is built once, and no reader sees half of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import zoo.folders as folders
from merging.once import OnceCache
from tests.zoo.test_folders import TASKS, finetune, tower, write_data, write_plain

THREADS = 6


def _together(fn: Callable[[int], object], n: int = THREADS) -> list[object]:
    """``fn(i)`` in ``n`` threads released at once; their results (an exception is re-raised)."""
    barrier, out, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return out


def _slow_counter(calls: list[str], name: str, value: Callable[[], object]) -> Callable[[], object]:
    def build() -> object:
        calls.append(name)
        time.sleep(0.05)  # wide open window for a second builder
        return value()
    return build


def test_once_cache_builds_each_key_once_and_keeps_no_failure() -> None:
    cache: OnceCache[str, object] = OnceCache(max_entries=2)
    calls: list[str] = []
    got = _together(lambda i: cache.get("a", _slow_counter(calls, "a", object)))
    assert calls == ["a"] and all(g is got[0] for g in got)

    def failing() -> object:
        calls.append("bad")
        raise ValueError("no")

    for _ in range(2):
        with pytest.raises(ValueError):
            cache.get("b", failing)
    assert calls.count("bad") == 2 and "b" not in cache  # a failure is not stored
    cache.get("b", object)
    cache.get("c", object)
    assert "a" not in cache and cache.peek("c") is not None  # least recently used goes first


@pytest.fixture(scope="module")
def folder_zoo(tmp_path_factory: pytest.TempPathFactory) -> folders.FolderZoo:
    base = tower(0, torch.nn.GELU, 2)
    models = {"": base, **{t: finetune(base, i + 1) for i, t in enumerate(TASKS)}}
    root = write_plain(tmp_path_factory.mktemp("plain"), models)
    return folders.open_folder(root, data=write_data(tmp_path_factory.mktemp("data")), device="cpu")


def test_two_sessions_asking_for_a_head_read_its_file_once(folder_zoo: folders.FolderZoo,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = folders.read_head
    monkeypatch.setattr(folders, "read_head", lambda *a: _slow_counter(calls, str(a[0]), lambda: real(*a))())
    task = TASKS[0]
    heads = _together(lambda i: folder_zoo.head(task))
    assert len(calls) == 1 and all(h is heads[0] for h in heads)
    assert folder_zoo.head_origin[task] == "file"


def test_two_sessions_loading_a_split_decode_it_once(folder_zoo: folders.FolderZoo,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = folder_zoo.data
    calls: list[str] = []
    real = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: _slow_counter(calls, a[0], lambda: real(*a))())
    splits = _together(lambda i: data.load(TASKS[1], "val", folder_zoo.preprocess))
    assert len(calls) == 1 and all(s is splits[0] for s in splits)


def test_a_note_added_by_many_sessions_appears_once(folder_zoo: folders.FolderZoo) -> None:
    before = folder_zoo.notes
    _together(lambda i: [folder_zoo._note(f"note {j}") for j in range(50)])
    assert folder_zoo.notes == before + [f"note {j}" for j in range(50)]
    folder_zoo.notes.append("x")  # readers get a copy: the zoo's own list is untouched
    assert folder_zoo.notes == before + [f"note {j}" for j in range(50)]


def test_digits_zoo_splits_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.digits as digits
    from zoo import load_zoo

    zoo = load_zoo("digits-tiny")
    calls: list[str] = []
    real = digits.task_split
    monkeypatch.setattr(digits, "task_split", lambda *a: _slow_counter(calls, a[1], lambda: real(*a))())
    task = zoo.tasks[0]
    got = _together(lambda i: zoo.split(task, "val"))
    assert calls.count(task) <= 1 and all(g is got[0] for g in got)  # 0 when an earlier test loaded it
