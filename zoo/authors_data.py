"""The authors' data location: evaluation data laid out as task_vectors (Ilharco et al., ICLR 2023),
TALL-masks (Wang et al., ICML 2024) and iso-merging (Marczak et al., ICML 2025) read it with
``--data-location``, for the paper's eight tasks. Each dataset is read with torchvision's own
dataset class where the authors use one (``download=False``: nothing is ever downloaded).

| task | folders under the data location | test | validation |
|---|---|---|---|
| MNIST | ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` | t10k | rule on train |
| SVHN | ``svhn/{train,test}_32x32.mat`` | test | rule on train |
| EuroSAT | ``EuroSAT_splits/{train,val,test}/<class>/`` | test | its own ``val`` |
| DTD | ``dtd/{train,val}/<class>/`` | ``val`` | rule on train |
| SUN397 | ``sun397/{train,val}/<class>/`` | ``val`` | rule on train |
| RESISC45 | ``resisc45/NWPU-RESISC45/<class>/`` + ``resisc45/resisc45-{train,test}.txt`` | test list | rule on train |
| GTSRB | ``gtsrb/GTSRB/Training/<class>/*.ppm``, ``gtsrb/GTSRB/Final_Test/Images`` + ``gtsrb/GT-final_test.csv`` | Final_Test | rule on train |
| Cars | ``stanford_cars/devkit/{cars_meta,cars_train_annos}.mat``, ``cars_train/``, ``cars_test/``, ``cars_test_annos_withlabels.mat`` | test | rule on train |

"rule on train" is the authors' ``split_train_into_train_val`` (``zoo.data.authors_val_indices``):
the ``<Task>Val`` checkpoints of TALL-masks were selected on exactly that part. DTD and SUN397
hold a ``val`` folder that the authors *test* on; only EuroSAT has a validation split of its own
in their code (``EuroSATVal``), so only EuroSAT uses it.

Class names and order are the authors' per-dataset ``classnames`` (the row order of the
published heads): digits for MNIST and SVHN, the sorted class folders renamed for EuroSAT
(OpenAI's names), DTD and SUN397 (underscores to spaces; SUN397 drops the ``a_`` letter prefix),
RESISC45's 45 scene names, GTSRB's 43 sign descriptions of CLIP's prompt list, and the
``class_names`` of Cars' ``cars_meta.mat``. Labels are the dataset's own, so they index the
names directly.

Public API: ``AuthorsData(root)`` (a ``zoo.data.DataSource``), ``TASKS``, ``is_authors_location(root)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets as tv

from merging.once import OnceCache
from zoo.data import Catalogue, DataError, DataSource, authors_val_indices, task_key

log = logging.getLogger(__name__)

DIGITS = tuple(str(d) for d in range(10))
EUROSAT_NAMES = {  # sorted class folder -> the authors' (OpenAI's) class name
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road", "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments", "River": "river", "SeaLake": "lake or sea"}
GTSRB_NAMES = (  # class 00000 … 00042, as in CLIP's prompt list
    "red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit", "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing", "red and white triangle road intersection warning",
    "white and yellow diamond priority road", "red and white upside down triangle yield right-of-way", "stop",
    "empty red and white circle", "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry", "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory", "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended")

Opener = Callable[[Path, str], torch.utils.data.Dataset]  # (data location, "train" | "val" | "test") -> dataset


class _SVHN(tv.SVHN):
    """torchvision's SVHN reader without its md5 check of the ``.mat`` file (the file is only read)."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


def _mnist(root: Path, split: str) -> tv.MNIST:
    return tv.MNIST(root=str(root), train=split == "train", download=False)


def _svhn(root: Path, split: str) -> tv.SVHN:
    return _SVHN(root=str(root / "svhn"), split=split, download=False)


def _folder(name: str) -> Opener:
    """torchvision's ImageFolder over ``<root>/<name>/<split>``."""
    return lambda root, split: tv.ImageFolder(str(root / name / split))


def _resisc45(root: Path, split: str) -> tv.ImageFolder:
    listed = root / "resisc45" / f"resisc45-{split}.txt"
    names = {line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()}
    return tv.ImageFolder(str(root / "resisc45" / "NWPU-RESISC45"),
                          is_valid_file=lambda path: os.path.basename(path) in names)


def _gtsrb(root: Path, split: str) -> tv.GTSRB:
    return tv.GTSRB(root=str(root), split=split, download=False)


def _cars(root: Path, split: str) -> tv.StanfordCars:
    return tv.StanfordCars(root=str(root), split=split, download=False)


@dataclass(frozen=True)
class AuthorsTask:
    """One dataset of the authors' location: the paths that must exist, a reader per split, the
    authors' class names from the reader's classes, and which split tests and which validates."""

    needs: tuple[str, ...]  # paths under the location, for detection and messages
    open: Opener
    names: Callable[[Sequence[str]], tuple[str, ...]]
    test: str = "test"  # the reader's split the authors test on
    val: str | None = None  # the reader's split the authors validate on; None: the rule on "train"


def _spaces(classes: Sequence[str]) -> tuple[str, ...]:
    return tuple(c.replace("_", " ") for c in classes)


def _fixed(names: tuple[str, ...]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    return lambda classes: names


TASKS: dict[str, AuthorsTask] = {  # task_key -> dataset
    "mnist": AuthorsTask(("MNIST/raw",), _mnist, _fixed(DIGITS)),
    "svhn": AuthorsTask(("svhn/train_32x32.mat", "svhn/test_32x32.mat"), _svhn, _fixed(DIGITS)),
    "eurosat": AuthorsTask(("EuroSAT_splits/train", "EuroSAT_splits/test"),
                           _folder("EuroSAT_splits"),
                           lambda classes: tuple(EUROSAT_NAMES.get(c, c) for c in classes), val="val"),
    "dtd": AuthorsTask(("dtd/train", "dtd/val"), _folder("dtd"), _spaces, test="val"),
    "sun397": AuthorsTask(("sun397/train", "sun397/val"), _folder("sun397"),
                          lambda classes: _spaces([c[2:] for c in classes]), test="val"),
    "resisc45": AuthorsTask(("resisc45/NWPU-RESISC45", "resisc45/resisc45-train.txt", "resisc45/resisc45-test.txt"),
                            _resisc45, _spaces),
    "gtsrb": AuthorsTask(("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
                         _gtsrb, _fixed(GTSRB_NAMES)),
    "cars": AuthorsTask(("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                         "stanford_cars/cars_train", "stanford_cars/cars_test",
                         "stanford_cars/cars_test_annos_withlabels.mat"), _cars, _spaces),
}


def is_authors_location(root: Path) -> bool:
    """Whether ``root`` holds the first path of at least one of the authors' datasets."""
    return any((root / spec.needs[0]).exists() for spec in TASKS.values())


def _labels(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """The labels (N,) of a torchvision classification dataset, without decoding any image."""
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            return torch.as_tensor(getattr(dataset, attribute), dtype=torch.long)
    return torch.tensor([label for _, label in dataset._samples], dtype=torch.long)  # GTSRB, StanfordCars


def _classes(dataset: torch.utils.data.Dataset) -> tuple[str, ...]:
    return tuple(getattr(dataset, "classes", ()))


class AuthorsData(DataSource):
    """The authors' data location as a ``DataSource`` (module docstring)."""

    layout = "the authors' data location"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._datasets: OnceCache[tuple[str, str], torch.utils.data.Dataset] = OnceCache()  # shared by sessions

    def _spec(self, task: str) -> AuthorsTask | None:
        return TASKS.get(task_key(task))

    def _present(self, task: str) -> bool:
        spec = self._spec(task)
        return spec is not None and all((self.root / need).exists() for need in spec.needs)

    def splits(self, task: str) -> list[str]:
        return ["test", "val"] if self._present(task) else []

    def expected(self, task: str) -> str:
        spec = self._spec(task)
        if spec is None:
            return (f"one of the authors' datasets ({', '.join(TASKS)}); {task} is not among them")
        absent = [need for need in spec.needs if not (self.root / need).exists()]
        return f"{', '.join(absent or spec.needs)} under {self.root}"

    def stamp(self, task: str) -> list[Path]:
        spec = self._spec(task)
        return [self.root / need for need in spec.needs] if spec is not None and self._present(task) else []

    def head_classes(self, task: str) -> list[str] | None:
        return list(self.classes(task) or ()) or None

    def _dataset(self, task: str, split: str) -> torch.utils.data.Dataset:
        return self._datasets.get((task_key(task), split), lambda: self._open(task, split))

    def _open(self, task: str, split: str) -> torch.utils.data.Dataset:
        try:
            return self._spec(task).open(self.root, split)
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise DataError(f"task {task}: cannot read its {split} data under {self.root} ({err})") from err

    def _catalogue(self, task: str, split: str) -> Catalogue:
        spec = self._spec(task)
        own = spec.test if split == "test" else spec.val
        dataset = self._dataset(task, own or "train")
        labels, names = _labels(dataset), spec.names(_classes(dataset))
        items = Catalogue(labels, names, lambda i: dataset[i][0])
        if own is None:
            return items.subset(authors_val_indices(len(items)))
        return items
