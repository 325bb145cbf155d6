"""Which kind of evaluation data a folder holds, detected (``open_data``), as one
``zoo.data.DataSource``: Hugging Face datasets (a hub cache with dataset repositories, or
``save_to_disk`` folders), the authors' data location (task_vectors / TALL-masks / iso-merging),
or per-task ImageFolder trees (the default).

Public API: ``open_data(root) -> DataSource``, ``DATA_LAYOUTS`` (probe, source), in detection order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from merging.paths import allowed_path
from zoo.authors_data import AuthorsData, is_authors_location
from zoo.data import DataError, DataSource, ImageFolderData
from zoo.hf_datasets import HFData, is_hf_location

DATA_LAYOUTS: tuple[tuple[Callable[[Path], bool], type[DataSource]], ...] = (
    (is_hf_location, HFData),
    (is_authors_location, AuthorsData),
    (lambda root: True, ImageFolderData),
)


def open_data(root: str | Path) -> DataSource:
    """The data source of the folder ``root`` (the first layout of ``DATA_LAYOUTS`` that matches)."""
    path = allowed_path(root)
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist (expected <data>/<Task>/val|test/<class>/<image>, the "
                        f"authors' data location, or Hugging Face datasets)")
    return next(source(path) for probe, source in DATA_LAYOUTS if probe(path))
