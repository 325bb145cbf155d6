"""Evaluation data for real checkpoints: one ImageFolder tree per task,
``<data>/<Task>/{val,test}/<class>/<image>``, preprocessed as CLIP preprocesses its inputs
(Radford et al. 2021, §2.3 and the released code: resize the shorter side to the encoder's
input size with bicubic interpolation, centre crop, RGB, normalise by the CLIP mean/std).

Decoded images are kept once, as uint8 crops (N, 3, S, S), 4× smaller than float; batches are
normalised to float only when an encoder consumes them. Class indices follow the sorted class
folder names (torchvision's ImageFolder convention), so head rows must use the same order.

Public API:
- ``Preprocess``: image size and normalisation; ``.crop(pil)``, ``.normalise(uint8 batch)``.
- ``ImageFolderData(root)``: ``task_dir``, ``splits(task)``, ``load(task, split, preprocess)``.
- ``Split``: images (N, 3, S, S) uint8, labels (N,), classes; ``batches(preprocess, size)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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


class DataError(IsoscopeError):
    """Evaluation data is missing or not in ImageFolder layout."""


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


class ImageFolderData:
    """Per-task ImageFolder trees under ``root``; decoded splits are cached in memory."""

    def __init__(self, root: str | Path) -> None:
        self.root = allowed_path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist (expected <data>/<Task>/val|test/<class>/<image>)")
        self._cache: OnceCache[tuple[str, str, Preprocess], Split] = OnceCache()  # shared by sessions

    def task_dir(self, task: str) -> Path | None:
        """``<root>/<task>``, matched case-insensitively; None when absent."""
        exact = self.root / task
        if exact.is_dir():
            return exact
        return next((d for d in sorted(self.root.iterdir()) if d.is_dir() and d.name.lower() == task.lower()), None)

    def splits(self, task: str) -> list[str]:
        """The splits (of val, test) present for ``task``."""
        folder = self.task_dir(task)
        return [s for s in SPLITS if folder is not None and (folder / s).is_dir()]

    def missing(self, tasks: list[str], split: str) -> list[str]:
        """Tasks among ``tasks`` with no ``split`` folder."""
        return [t for t in tasks if split not in self.splits(t)]

    def load(self, task: str, split: str, preprocess: Preprocess) -> Split:
        """The decoded ``split`` of ``task`` (cached per task, split and preprocessing)."""
        return self._cache.get((task, split, preprocess), lambda: self._read(task, split, preprocess))

    def _read(self, task: str, split: str, preprocess: Preprocess) -> Split:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
        if split not in self.splits(task):
            raise DataError(f"no {split} data for task {task}: expected images in {self.root / task / split}/<class>/")
        folder = self.task_dir(task) / split
        classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
        files = [(f, label) for label, name in enumerate(classes)
                 for f in sorted((folder / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{folder} holds no images (expected {folder}/<class>/<image>)")
        log.info("decoding %d images of %s/%s", len(files), task, split)
        images = torch.stack([_decode(allowed_path(f), preprocess) for f, _ in files])  # (N, 3, S, S) uint8
        labels = torch.tensor([label for _, label in files], dtype=torch.long)  # (N,)
        return Split(images=images, labels=labels, classes=classes)


def _decode(path: Path, preprocess: Preprocess) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return preprocess.crop(image)
    except OSError as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
