"""Tiny replicas of evaluation data, written the way the real files are written.

The authors' data location (task_vectors / TALL-masks / iso-merging ``--data-location``): idx files
with their magic numbers, SVHN's ``.mat`` through ``scipy.io.savemat`` with the keys ``X`` (H, W, 3,
N) and ``y`` (N, 1) (label 10 for the digit 0), ImageFolder trees, RESISC45's split lists, GTSRB's
``.ppm`` folders and ``GT-final_test.csv`` (``;``-separated), Stanford Cars' devkit ``.mat``
files (struct arrays ``annotations`` with ``fname`` and 1-based ``class``, ``class_names``).

Hugging Face datasets: a hub-cache dataset repository (``datasets--<org>--<name>`` with
``refs/main``, ``snapshots/<rev>/`` symlinks into ``blobs/``, parquet shards written by pyarrow
*without* the ``datasets`` schema metadata, and a dataset card whose YAML carries the
``ClassLabel`` names), and a ``save_to_disk`` folder.

Every writer returns, per task, what the authors' reader must give: the images of each split in
the reader's order (as PIL images read back from what was written) with their labels, and the
authors' class names. Sizes stay tiny (a few dozen 10×12 images).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

SIZE = (12, 10)  # (width, height) of every written image


@dataclass
class Expected:
    """What the reader of one task must give: per split, images and labels in order; class names."""

    classes: tuple[str, ...]
    images: dict[str, list[Image.Image]] = field(default_factory=dict)  # "train" | "val" | "test" -> images
    labels: dict[str, list[int]] = field(default_factory=dict)


def _pixels(rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    shape = (SIZE[1], SIZE[0], channels) if channels > 1 else (SIZE[1], SIZE[0])
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, rng: np.random.Generator) -> Image.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(rng)).save(path)
    with Image.open(path) as image:
        return image.convert("RGB")


def _add(expected: Expected, split: str, image: Image.Image, label: int) -> None:
    expected.images.setdefault(split, []).append(image)
    expected.labels.setdefault(split, []).append(label)


def _image_folder(root: Path, classes: tuple[str, ...], counts: dict[str, int], rng: np.random.Generator,
                  expected: Expected, suffix: str = ".png") -> None:
    """``<root>/<split>/<class>/<i>`` with ``counts[split]`` images per class, in ImageFolder order."""
    for split, count in counts.items():
        for label, name in enumerate(sorted(classes)):
            for i in range(count):
                _add(expected, split, _save(root / split / name / f"{name}_{i:03d}{suffix}", rng), label)


def write_mnist(root: Path, rng: np.random.Generator) -> Expected:
    """``MNIST/raw``: idx3 images (magic 2051) and idx1 labels (magic 2049), big-endian sizes."""
    expected = Expected(tuple(str(d) for d in range(10)))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split, n in (("train", "train", 40), ("t10k", "test", 20)):
        images = np.stack([_pixels(rng, 1) for _ in range(n)])  # (N, H, W) uint8
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 2051, n, SIZE[1], SIZE[0]) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, n) + labels.tobytes())
        for image, label in zip(images, labels):
            _add(expected, split, Image.fromarray(image, mode="L").convert("RGB"), int(label))
    return expected


def write_svhn(root: Path, rng: np.random.Generator) -> Expected:
    """``svhn/{train,test}_32x32.mat``: X (H, W, 3, N) uint8, y (N, 1) with 10 standing for 0."""
    expected = Expected(tuple(str(d) for d in range(10)))
    (root / "svhn").mkdir(parents=True)
    for split, n in (("train", 30), ("test", 20)):
        images = np.stack([_pixels(rng) for _ in range(n)], axis=-1)  # (H, W, 3, N)
        labels = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        scipy.io.savemat(root / "svhn" / f"{split}_32x32.mat", {"X": images, "y": labels})
        for i in range(n):
            _add(expected, split, Image.fromarray(images[..., i]), int(labels[i, 0]) % 10)
    return expected


EUROSAT = ("AnnualCrop", "Forest", "SeaLake")


def write_eurosat(root: Path, rng: np.random.Generator) -> Expected:
    expected = Expected(("annual crop land", "forest", "lake or sea"))
    _image_folder(root / "EuroSAT_splits", EUROSAT, {"train": 4, "val": 2, "test": 3}, rng, expected)
    return expected


def write_dtd(root: Path, rng: np.random.Generator) -> Expected:
    """``dtd/{train,val}``: the authors test on ``val``."""
    expected = Expected(("banded", "bubbly", "cobwebbed"))
    staged = Expected(expected.classes)
    _image_folder(root / "dtd", ("bubbly", "banded", "cobwebbed"), {"train": 4, "val": 3}, rng, staged, ".jpg")
    expected.images = {"train": staged.images["train"], "test": staged.images["val"]}
    expected.labels = {"train": staged.labels["train"], "test": staged.labels["val"]}
    return expected


def write_sun397(root: Path, rng: np.random.Generator) -> Expected:
    """``sun397/{train,val}/<letter>_<name>``: the authors drop the two-letter prefix and test on ``val``."""
    expected = Expected(("abbey", "airport terminal", "badlands"))
    staged = Expected(expected.classes)
    _image_folder(root / "sun397", ("a_abbey", "a_airport_terminal", "b_badlands"), {"train": 4, "val": 2}, rng, staged)
    expected.images = {"train": staged.images["train"], "test": staged.images["val"]}
    expected.labels = {"train": staged.labels["train"], "test": staged.labels["val"]}
    return expected


RESISC45 = ("airplane", "baseball_diamond", "sea_ice")


def write_resisc45(root: Path, rng: np.random.Generator) -> Expected:
    """``resisc45/NWPU-RESISC45/<class>/<class>_NNN.jpg`` and ``resisc45-{train,val,test}.txt``
    listing file names; a split is the ImageFolder restricted to its list."""
    expected = Expected(("airplane", "baseball diamond", "sea ice"))
    folder, lists = root / "resisc45" / "NWPU-RESISC45", {"train": [], "val": [], "test": []}
    assigned = ["train"] * 4 + ["val", "test", "test"]
    images: dict[str, list] = {s: [] for s in lists}
    for label, name in enumerate(RESISC45):
        for i, split in enumerate(assigned):
            file = f"{name}_{i + 1:03d}.png"
            lists[split].append(file)
            images[split].append((_save(folder / name / file, rng), label))
    for split, files in lists.items():
        (root / "resisc45" / f"resisc45-{split}.txt").write_text("\n".join(files) + "\n")
    for split in ("train", "test"):
        for image, label in images[split]:
            _add(expected, split, image, label)
    return expected


def write_gtsrb(root: Path, rng: np.random.Generator) -> Expected:
    """``gtsrb/GTSRB/Training/000NN/*.ppm`` and ``gtsrb/GTSRB/Final_Test/Images/*.ppm`` with
    ``gtsrb/GT-final_test.csv`` (``;``-separated, ``Filename`` and ``ClassId``)."""
    from zoo.authors_data import GTSRB_NAMES

    expected = Expected(GTSRB_NAMES)
    base = root / "gtsrb"
    for label in (0, 1, 2):  # the real folders run 00000 … 00042
        for i in range(4):
            _add(expected, "train", _save(base / "GTSRB" / "Training" / f"{label:05d}" / f"00000_{i:05d}.ppm", rng), label)
    (base / "GTSRB" / "Training" / "00000" / "GT-00000.csv").write_text("Filename;ClassId\n")  # not an image
    rows = []
    for i, label in enumerate((2, 0, 1, 1, 0)):
        name = f"{i:05d}.ppm"
        _add(expected, "test", _save(base / "GTSRB" / "Final_Test" / "Images" / name, rng), label)
        rows.append({"Filename": name, "Width": SIZE[0], "Height": SIZE[1], "Roi.X1": 1, "Roi.Y1": 1,
                     "Roi.X2": SIZE[0] - 1, "Roi.Y2": SIZE[1] - 1, "ClassId": label})
    with open(base / "GT-final_test.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=";")
        writer.writeheader()
        writer.writerows(rows)
    return expected


CARS = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012")


def _annotations(files: list[str], labels: list[int]) -> np.ndarray:
    """A devkit ``annotations`` struct array: bounding box, 1-based ``class``, ``fname``."""
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    records = np.zeros((1, len(files)), dtype=dtype)
    for i, (file, label) in enumerate(zip(files, labels)):
        records[0, i] = (np.array([[1]]), np.array([[1]]), np.array([[SIZE[0]]]), np.array([[SIZE[1]]]),
                         np.array([[label + 1]], dtype=np.uint8), np.array([file]))
    return records


def write_cars(root: Path, rng: np.random.Generator) -> Expected:
    """``stanford_cars/``: devkit ``cars_meta.mat`` (class_names), ``cars_train_annos.mat``,
    ``cars_test_annos_withlabels.mat`` and the ``cars_train``/``cars_test`` image folders."""
    expected = Expected(CARS)
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, len(CARS)), dtype=object)
    names[0, :] = CARS
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    for split, mat, labels in (("train", base / "devkit" / "cars_train_annos.mat", [2, 0, 1, 1, 0, 2, 0, 1, 2, 0, 1, 2]),
                               ("test", base / "cars_test_annos_withlabels.mat", [1, 0, 2, 2, 1])):
        files = [f"{i + 1:05d}.jpg" for i in range(len(labels))]
        for file, label in zip(files, labels):
            _add(expected, split, _save(base / f"cars_{split}" / file, rng), label)
        scipy.io.savemat(mat, {"annotations": _annotations(files, labels)})
    return expected


AUTHORS = {"MNIST": write_mnist, "SVHN": write_svhn, "EuroSAT": write_eurosat, "DTD": write_dtd,
           "SUN397": write_sun397, "RESISC45": write_resisc45, "GTSRB": write_gtsrb, "Cars": write_cars}


def write_authors_location(root: Path, tasks: tuple[str, ...] = tuple(AUTHORS)) -> dict[str, Expected]:
    """The authors' data location for ``tasks`` under ``root``; task -> what its reader must give."""
    return {task: AUTHORS[task](root, np.random.default_rng(i)) for i, task in enumerate(tasks)}


# --- Hugging Face ---------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(rng: np.random.Generator, labels: list[int], expected: Expected, split: str) -> list[bytes]:
    encoded = []
    for label in labels:
        data = _png(_pixels(rng))
        encoded.append(data)
        _add(expected, split, Image.open(io.BytesIO(data)).convert("RGB"), label)
    return encoded


def _card(classes: tuple[str, ...], splits: dict[str, int]) -> str:
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(classes))
    split_rows = "\n".join(f"  - name: {s}\n    num_bytes: {100 * n}\n    num_examples: {n}" for s, n in splits.items())
    return ("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
            f"      class_label:\n        names:\n{names}\n  splits:\n{split_rows}\n---\n# replica\n")


def write_hub_dataset(hub: Path, org: str, name: str, classes: tuple[str, ...], splits: dict[str, list[int]],
                      seed: int) -> Expected:
    """``<hub>/datasets--<org>--<name>``: parquet shards (two for the first split) under ``data/`` as
    blobs named by their hash, symlinked from ``snapshots/<rev>/``, ``refs/main`` = rev, and a
    ``README.md`` card carrying the ClassLabel names (the shards hold no ``datasets`` metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, expected = np.random.default_rng(seed), Expected(classes)
    repo, rev = hub / f"datasets--{org}--{name}", "0123456789abcdef0123456789abcdef01234567"
    snapshot, blobs = repo / "snapshots" / rev, repo / "blobs"
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    files: dict[str, bytes] = {"README.md": _card(classes, {s: len(v) for s, v in splits.items()}).encode()}
    for k, (split, labels) in enumerate(splits.items()):
        shards = [labels[: len(labels) // 2], labels[len(labels) // 2:]] if k == 0 else [labels]
        for j, part in enumerate(shards):
            images = _rows(rng, part, expected, split)
            table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in images], type=image_type),
                              "label": pa.array(part, type=pa.int64())})
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            files[f"data/{split}-{j:05d}-of-{len(shards):05d}.parquet"] = sink.getvalue().to_pybytes()
    for relative, content in files.items():
        blob = blobs / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return expected


def write_saved_dataset(root: Path, name: str, classes: tuple[str, ...], splits: dict[str, list[int]],
                        seed: int) -> Expected:
    """``<root>/<name>/``: a DatasetDict written by ``save_to_disk`` (Image and ClassLabel features)."""
    import datasets

    rng, expected = np.random.default_rng(seed), Expected(classes)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    parts = {split: datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in _rows(rng, labels, expected, split)], "label": labels},
        features=features) for split, labels in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(root / name))
    return expected
