"""Evaluation data for real checkpoints, preprocessed as CLIP preprocesses its inputs
(Radford et al. 2021, §2.3 and the released code: resize the shorter side to the encoder's
input size with bicubic interpolation, centre crop, RGB, normalise by the CLIP mean/std).

A *data source* knows, per task and split (``test``, ``val``), a ``Catalogue``: the labels
(N,), the class names and a reader of image i, before anything is decoded. ``DataSource.load``
then picks the images to score (all of them, or a stratified sample of at most ``max_images``
with a fixed seed: the quick mode) and decodes only those. Sources: ``ImageFolderData`` here
(``<data>/<Task>/{val,test}/<class>/<image>``), the authors' data location
(``zoo.authors_data``) and Hugging Face datasets (``zoo.hf_datasets``); ``zoo.data_sources``
detects which one a folder holds.

Validation split of a dataset without one: the rule of task_vectors / TALL-masks /
iso-merging (``split_train_into_train_val``): ``random_split`` of the train set into
(train, val) with val = min(⌊0.1·N⌋, 5000) samples and ``torch.Generator().manual_seed(0)``;
the val part is the last ``val`` positions of ``randperm(N)`` (``authors_val_indices``).

Decoded images are kept once, as uint8 crops (N, 3, S, S), 4× smaller than float; batches are
normalised to float only when an encoder consumes them.

Public API:
- ``Preprocess``: image size and normalisation; ``.crop(pil)``, ``.normalise(uint8 batch)``.
- ``Catalogue``: labels (N,), classes, ``read(i) -> PIL image``; ``subset(indices)``.
- ``DataSource``: ``splits(task)``, ``missing(tasks, split)``, ``size(task, split)``,
  ``load(task, split, preprocess, max_images=None)``, ``classes(task)``, ``head_classes(task)``,
  ``stamp(task)`` (the paths whose size and time identify the task's data).
- ``ImageFolderData(root)``: the ImageFolder source; ``task_dir(task)``.
- ``Split``: images (N, 3, S, S) uint8, labels (N,), classes; ``batches(preprocess, size)``.
- ``authors_val_indices(n)``, ``stratified_sample(labels, budget)``, ``task_key(name)``.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision.transforms import v2 as T

from merging.errors import IsoscopeError
from merging.once import OnceCache
from merging.paths import allowed_path
from zoo.base import SPLITS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
CLASSNAMES_FILE = "classnames.txt"  # in <data>/<Task>/: one class per line, in the head's row order
VAL_FRACTION, MAX_VAL, VAL_SEED = 0.1, 5000, 0  # the authors' validation rule (module docstring)
SAMPLE_SEED = 0  # the quick mode's stratified sample
TASK_ALIASES = {"stanfordcars": "cars"}  # task keys that name the same dataset


class DataError(IsoscopeError):
    """Evaluation data is missing or cannot be read."""


@dataclass(frozen=True)
class Preprocess:
    """CLIP-style evaluation preprocessing for an encoder with ``image_size`` inputs."""

    image_size: int
    mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    std: tuple[float, ...] = OPENAI_DATASET_STD

    def crop(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side (bicubic), centre crop, RGB: uint8 (3, S, S)."""
        resize = T.Compose([T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC,
                                     antialias=True), T.CenterCrop(self.image_size), T.PILToTensor()])
        return resize(image.convert("RGB"))  # (3, S, S) uint8

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 (N, 3, S, S) with the mean/std of this preprocessing."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std


@dataclass(frozen=True)
class Split:
    """One task's split: cropped uint8 images (N, 3, S, S), labels (N,), class names (C,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def batches(self, preprocess: Preprocess, size: int = 256) -> Iterator[torch.Tensor]:
        """Normalised float batches (b, 3, S, S) in order."""
        for start in range(0, self.images.shape[0], size):
            yield preprocess.normalise(self.images[start:start + size])


@dataclass(frozen=True)
class Catalogue:
    """One split before decoding: labels (N,), class names (C,), and ``read(i)``, image i as PIL."""

    labels: torch.Tensor
    classes: tuple[str, ...]
    read: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> Catalogue:
        """The items at ``indices`` (k,), in that order."""
        positions = [int(i) for i in indices]
        return Catalogue(self.labels[indices], self.classes, lambda i: self.read(positions[i]))


def task_key(name: str) -> str:
    """A task or dataset name compared loosely: lower case, letters and digits only, without a
    trailing ``val`` (TALL-masks' ``MNISTVal``), aliases folded (``stanford_cars`` is ``cars``)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    key = key[:-3] if key.endswith("val") and len(key) > 3 else key
    return TASK_ALIASES.get(key, key)


def authors_val_indices(size: int, fraction: float = VAL_FRACTION, cap: int = MAX_VAL,
                        seed: int = VAL_SEED) -> torch.Tensor:
    """Positions (v,) in a train set of ``size`` items of the authors' validation part: what
    ``random_split(train, [size - v, v], generator=torch.Generator().manual_seed(seed))`` gives
    as its second subset, v = min(⌊fraction·size⌋, cap)."""
    val = min(int(size * fraction), cap)
    if val <= 0 or val >= size:
        raise DataError(f"a train set of {size} images is too small to hold out a validation split")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[size - val:]  # (v,)


def stratified_sample(labels: torch.Tensor, budget: int, seed: int = SAMPLE_SEED) -> torch.Tensor:
    """Sorted positions (min(budget, N),) of a class-stratified sample of ``labels`` (N,): every
    class gets its share of ``budget`` (largest remainders round), drawn without replacement
    with a generator seeded by ``seed``. A budget of N or more returns every position."""
    total = int(labels.shape[0])
    if budget >= total:
        return torch.arange(total)
    classes, counts = torch.unique(labels, return_counts=True)  # (K,), (K,)
    exact = counts.double() * budget / total
    quota = exact.floor().long()
    order = torch.argsort(-(exact - quota), stable=True)
    quota[order[: budget - int(quota.sum())]] += 1
    generator = torch.Generator().manual_seed(seed)
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(n), generator=generator)[:int(q)]]
              for c, n, q in zip(classes, counts, quota)]
    return torch.cat(picked).sort().values


class DataSource(abc.ABC):
    """Evaluation data for tasks (see module docstring); decoded splits are cached in memory."""

    layout = "data"  # the name the app shows

    def __init__(self, root: str | Path) -> None:
        self.root = allowed_path(root)
        # every session shares a zoo's data: each catalogue and decoded split is built once
        self._catalogues: OnceCache[tuple[str, str], Catalogue] = OnceCache()
        self._cache: OnceCache[tuple[str, str, Preprocess, int | None], Split] = OnceCache()

    @abc.abstractmethod
    def splits(self, task: str) -> list[str]:
        """The splits (of ``SPLITS``) this source holds for ``task``."""

    @abc.abstractmethod
    def _catalogue(self, task: str, split: str) -> Catalogue:
        """The split's labels, classes and reader (only called for a split in ``splits``)."""

    @abc.abstractmethod
    def expected(self, task: str) -> str:
        """Where this source looks for ``task`` (for messages)."""

    def stamp(self, task: str) -> list[Path]:
        """Paths whose size and modification time identify ``task``'s data (the zoo fingerprint)."""
        return []

    def head_classes(self, task: str) -> list[str] | None:
        """The class names in the head's row order when the data says it, else None."""
        return None

    def missing(self, tasks: list[str], split: str) -> list[str]:
        """Tasks among ``tasks`` with no ``split``."""
        return [t for t in tasks if split not in self.splits(t)]

    def catalogue(self, task: str, split: str) -> Catalogue:
        """The (cached) catalogue of ``task``'s ``split``; a clear error when it is absent."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
        if split not in self.splits(task):
            raise DataError(f"no {split} data for task {task}: expected {self.expected(task)}")
        return self._catalogues.get((task, split), lambda: self._catalogue(task, split))

    def size(self, task: str, split: str) -> int:
        """Images in ``task``'s full ``split``."""
        return len(self.catalogue(task, split))

    def classes(self, task: str) -> tuple[str, ...] | None:
        """The data's class names of ``task`` (labels index them), None without any split."""
        split = next((s for s in SPLITS if s in self.splits(task)), None)
        return self.catalogue(task, split).classes if split else None

    def load(self, task: str, split: str, preprocess: Preprocess, max_images: int | None = None) -> Split:
        """The decoded ``split`` of ``task``: every image, or a stratified sample of at most
        ``max_images`` (cached per task, split, preprocessing and budget)."""
        return self._cache.get((task, split, preprocess, max_images),
                               lambda: self._decode(task, split, preprocess, max_images))

    def _decode(self, task: str, split: str, preprocess: Preprocess, max_images: int | None) -> Split:
        items = self.catalogue(task, split)
        if max_images is not None:
            items = items.subset(stratified_sample(items.labels, max_images))
        if not len(items):
            raise DataError(f"{self.expected(task)} holds no {split} images for task {task}")
        log.info("decoding %d images of %s/%s", len(items), task, split)
        images = torch.stack([_crop(items.read, i, preprocess) for i in range(len(items))])  # (N, 3, S, S)
        return Split(images=images, labels=items.labels.long(), classes=items.classes)


class ImageFolderData(DataSource):
    """Per-task ImageFolder trees under ``root``: ``<root>/<Task>/{val,test}/<class>/<image>``;
    class indices follow the sorted class folders (torchvision's ImageFolder), mapped onto
    ``<root>/<Task>/classnames.txt`` when present."""

    layout = "ImageFolder"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist (expected <data>/<Task>/val|test/<class>/<image>)")

    def task_dir(self, task: str) -> Path | None:
        """``<root>/<task>``, matched case-insensitively; None when absent."""
        exact = self.root / task
        if exact.is_dir():
            return exact
        return next((d for d in sorted(self.root.iterdir()) if d.is_dir() and d.name.lower() == task.lower()), None)

    def splits(self, task: str) -> list[str]:
        folder = self.task_dir(task)
        return [s for s in SPLITS if folder is not None and (folder / s).is_dir()]

    def expected(self, task: str) -> str:
        return f"images in {self.root / task}/<split>/<class>/"

    def stamp(self, task: str) -> list[Path]:
        folder = self.task_dir(task)
        return sorted(folder.rglob("*")) if folder else []

    def head_classes(self, task: str) -> list[str] | None:
        folder = self.task_dir(task)
        path = folder / CLASSNAMES_FILE if folder else None
        if path is None or not path.is_file():
            return None
        names = [line.strip() for line in allowed_path(path).read_text(encoding="utf-8").splitlines()]
        return [n for n in names if n] or None

    def _catalogue(self, task: str, split: str) -> Catalogue:
        folder = self.task_dir(task) / split
        classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
        files = [(f, label) for label, name in enumerate(classes)
                 for f in sorted((folder / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{folder} holds no images (expected {folder}/<class>/<image>)")
        labels = torch.tensor([label for _, label in files], dtype=torch.long)  # (N,)
        return Catalogue(labels, classes, lambda i: _open(files[i][0]))


def _open(path: Path) -> Image.Image:
    """The image at ``path``, read into memory (the file is closed)."""
    try:
        with Image.open(allowed_path(path)) as image:
            image.load()
            return image.copy()
    except OSError as err:
        raise DataError(f"{path}: not a readable image ({err})") from err


def _crop(read: Callable[[int], Image.Image], i: int, preprocess: Preprocess) -> torch.Tensor:
    try:
        return preprocess.crop(read(i))  # (3, S, S) uint8
    except OSError as err:
        raise DataError(f"image {i}: not a readable image ({err})") from err
