"""Hugging Face datasets as evaluation data, offline, through the ``datasets`` library: the hub
cache that ``load_dataset`` fills (FusionBench's dataset repositories, e.g.
``hub/datasets--tanganke--<task>/snapshots/<rev>/`` with parquet shards and a dataset card) and
folders written by ``save_to_disk`` (``<data>/<task>/dataset_dict.json``).

Each dataset's ``image`` and ``label`` columns are read; the label's ``ClassLabel`` names (from
the parquet metadata or the dataset card) are the class order, and the dataset is matched to a
checkpoint task by name (``zoo.data.task_key``: case, punctuation and a ``Val`` suffix ignored;
``stanford_cars`` is ``Cars``). Test is the ``test`` split; validation is a ``validation``/``val``
split when there is one, else the authors' rule on ``train`` (``zoo.data.authors_val_indices``),
as for the authors' data location.

Nothing is downloaded: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set before ``datasets``
is imported, and a snapshot is loaded as a local folder. Loading converts the parquet shards once
to Arrow files under ``$ISOSCOPE_CACHE/hf-datasets`` (memory-mapped afterwards).

Public API: ``HFData(root)`` (a ``zoo.data.DataSource``), ``is_hf_location(root)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merging.once import OnceCache
from merging.paths import cache_root
from zoo.data import Catalogue, DataError, DataSource, authors_val_indices, task_key

log = logging.getLogger(__name__)

REPO_PREFIX = "datasets--"
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # a save_to_disk DatasetDict / Dataset
OUR_SPLITS = {"test": ("test",), "val": ("validation", "val", "valid")}  # ours -> HF split names, first found
IMAGE_COLUMNS, LABEL_COLUMNS = ("image", "img"), ("label", "labels")


def _offline() -> Any:
    """The ``datasets`` module, imported with every network access switched off."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()  # progress goes to the log, not to stderr bars
    return datasets


def _snapshot(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` names in a hub-cache repository, else the newest one."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        named = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if named.is_dir():
            return named
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


@dataclass(frozen=True)
class Found:
    """One dataset found on disk: its name, folder, split names (read without loading) and loader."""

    name: str
    folder: Path
    splits: tuple[str, ...]
    load: Callable[[], Any]


def _parquet_splits(snapshot: Path) -> tuple[str, ...]:
    """Split names of a snapshot's parquet shards: ``<split>-00000-of-00002.parquet`` (``push_to_hub``)
    or ``<config>/<split>/0000.parquet`` (the Hub's parquet conversion)."""
    names = set()
    for shard in snapshot.rglob("*.parquet"):
        match = re.match(r"([A-Za-z_]+)-\d+-of-\d+$", shard.stem) or re.match(r"([A-Za-z_]+)$", shard.stem)
        names.add(match.group(1) if match else shard.parent.name)
    return tuple(sorted(names))


def _saved_splits(folder: Path) -> tuple[str, ...]:
    """Split names of a ``save_to_disk`` folder (its ``dataset_dict.json``; one Dataset is ``train``)."""
    listing = folder / SAVED_MARKERS[0]
    if listing.is_file():
        return tuple(json.loads(listing.read_text(encoding="utf-8")).get("splits", ()))
    return ("train",)


def _hub_repos(root: Path) -> dict[str, Found]:
    """task key -> (repository name, folder, loader) for every dataset repository of a hub cache at
    ``root`` (the ``hub`` folder, or ``HF_HOME`` above it)."""
    found = {}
    for hub in (root, root / "hub"):
        for repo in sorted(hub.glob(REPO_PREFIX + "*")) if hub.is_dir() else []:
            snapshot = _snapshot(repo)
            name = repo.name.split("--")[-1]
            if snapshot is not None:
                found.setdefault(task_key(name), Found(name, repo, _parquet_splits(snapshot),
                                                       lambda s=snapshot: _load_snapshot(s)))
    return found


def _saved(root: Path) -> dict[str, Found]:
    """task key -> (folder name, folder, loader) for every ``save_to_disk`` folder directly under ``root``."""
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and any((d / m).is_file() for m in SAVED_MARKERS)]
    return {task_key(d.name): Found(d.name, d, _saved_splits(d), lambda d=d: _offline().load_from_disk(str(d)))
            for d in folders}


def _load_snapshot(snapshot: Path) -> Any:
    return _offline().load_dataset(str(snapshot), cache_dir=str(cache_root() / "hf-datasets"))


def is_hf_location(root: Path) -> bool:
    """Whether ``root`` holds a hub cache with dataset repositories or ``save_to_disk`` folders."""
    return root.is_dir() and bool(_hub_repos(root) or _saved(root))


def _column(dataset: Any, names: tuple[str, ...], what: str) -> str:
    column = next((n for n in names if n in dataset.column_names), None)
    if column is None:
        raise DataError(f"no {what} column ({' or '.join(names)}) among {', '.join(dataset.column_names)}")
    return column


class HFData(DataSource):
    """Hugging Face datasets under ``root`` as a ``DataSource`` (module docstring)."""

    layout = "Hugging Face datasets"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._found = _saved(self.root) | _hub_repos(self.root)
        self._loaded: OnceCache[str, dict[str, Any]] = OnceCache()  # shared by sessions

    def _splits_of(self, task: str) -> dict[str, Any]:
        """HF split name -> Dataset of ``task`` (loaded once)."""
        return self._loaded.get(task_key(task), lambda: self._load(task))

    def _load(self, task: str) -> dict[str, Any]:
        found = self._found[task_key(task)]
        try:
            loaded = found.load()
        except Exception as err:  # the datasets library raises many kinds: name the dataset
            raise DataError(f"task {task}: cannot read the dataset {found.name} under {self.root} ({err})") from err
        return dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}

    def _source(self, task: str, split: str) -> tuple[str | None, bool]:
        """(HF split to read, whether the authors' rule applies to it) for our ``split``."""
        available = self._found[task_key(task)].splits  # known without loading the dataset
        own = next((s for s in OUR_SPLITS[split] if s in available), None)
        if own is not None:
            return own, False
        return ("train", True) if split == "val" and "train" in available else (None, False)

    def splits(self, task: str) -> list[str]:
        if task_key(task) not in self._found:
            return []
        return [s for s in ("test", "val") if self._source(task, s)[0] is not None]

    def expected(self, task: str) -> str:
        return (f"a dataset named {task} under {self.root} ({REPO_PREFIX}<org>--{task} in the hub cache, or a "
                f"save_to_disk folder {task}/) with a test split; found: {', '.join(f.name for f in self._found.values())}")

    def stamp(self, task: str) -> list[Path]:
        key = task_key(task)
        if key not in self._found:
            return []
        return sorted(p for p in self._found[key].folder.rglob("*") if not p.is_dir())

    def head_classes(self, task: str) -> list[str] | None:
        return list(self.classes(task) or ()) or None

    def _catalogue(self, task: str, split: str) -> Catalogue:
        hf_split, rule = self._source(task, split)
        dataset = self._splits_of(task)[hf_split]
        image, label = _column(dataset, IMAGE_COLUMNS, "image"), _column(dataset, LABEL_COLUMNS, "label")
        names = getattr(dataset.features[label], "names", None)
        if not names:
            raise DataError(f"task {task}: the {label} column of {hf_split} is not a ClassLabel, so the class "
                            f"names (the head's row order) are unknown")
        labels = torch.from_numpy(np.asarray(dataset.with_format("numpy")[label], dtype=np.int64))  # (N,)
        items = Catalogue(labels, tuple(names), lambda i: dataset[int(i)][image])
        return items.subset(authors_val_indices(len(items))) if rule else items
