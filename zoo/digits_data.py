"""The eight digits tasks: real handwritten digits (scikit-learn's ``load_digits``, the UCI
optical-recognition set of Alpaydin & Kaynak, 1998: 1797 images, 8×8, 43 writers) rendered
into visually distinct domains (colourings, transformations, layouts) with label maps, to
mimic the 8-task benchmark of Ilharco et al. 2023 ("Editing Models with Task Arithmetic").

Splits are fixed and shared by every task: a seeded permutation of the 1797 base images is cut
into test | val | train, so no base image of one task's test split is trained on by any task.
Images are float tensors in [0, 1], (N, 3, 32, 32); ``preprocess`` maps them to the encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
DIGITS = tuple((d,) for d in range(10))
RGB = tuple[float, float, float]
Shape = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (N, 8, 8) -> stroke mask (N, 1, 32, 32)
Paper = Callable[[int], torch.Tensor]  # n -> background (n, 3, 32, 32)


@dataclass(frozen=True)
class DigitTask:
    """One task: the stroke it draws, its ink and paper colours, and which digits each class holds."""

    name: str
    description: str
    shape: Shape
    ink: RGB
    paper: RGB | Paper
    classes: tuple[tuple[int, ...], ...] = DIGITS  # class c holds these digits
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))

    def labels(self, digits: torch.Tensor) -> torch.Tensor:
        """Class index (N,) of each digit label (N,)."""
        table = torch.empty(10, dtype=torch.long)
        for c, members in enumerate(self.classes):
            table[list(members)] = c
        return table[digits]

    def _background(self, n: int) -> torch.Tensor | RGB:
        return self.paper(n) if callable(self.paper) else self.paper

    def render(self, digits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The task's images (N, 3, 32, 32) of base digits (N, 8, 8)."""
        return _paint(self.shape(digits, gen), self.ink, self._background(digits.shape[0]))

    def prompt(self, digits: torch.Tensor) -> torch.Tensor:
        """The task's palette prompt (N, 3, 32, 32): its ink on its paper, the digit upright and
        centred, without the task's transformation, layout or noise (what a CLIP prompt naming the
        domain, "a red digit on green", would say of it)."""
        return _paint(_centred(digits), self.ink, self._background(digits.shape[0]))


@lru_cache(maxsize=1)
def base_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images (N, 8, 8) in [0, 1] and their digit labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32) / 16.0)
    return images, torch.from_numpy(np.asarray(data.target, dtype=np.int64))


def split_indices(sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint index sets per split, cut from one seeded permutation in the order test, val, train."""
    n = base_digits()[0].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for split in ("test", "val", "train"):
        out[split] = order[start:start + sizes[split]]
        start += sizes[split]
    if start > n:
        raise ValueError(f"splits need {start} images, load_digits has {n}")
    return out


# --- rendering primitives ------------------------------------------------------------------

def _upsample(digits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(digits[:, None], size=(size, size), mode="bilinear", align_corners=False)  # (N, 1, s, s)


def _centre(mask: torch.Tensor) -> torch.Tensor:
    pad = (IMAGE_SIZE - mask.shape[-1]) // 2
    return F.pad(mask, (pad, IMAGE_SIZE - mask.shape[-1] - pad) * 2)  # (N, 1, 32, 32)


def _paint(mask: torch.Tensor, fg: RGB, bg: torch.Tensor | RGB) -> torch.Tensor:
    """Colour a mask (N, 1, H, W): fg where the stroke is, bg elsewhere."""
    fg_t = torch.tensor(fg).view(1, 3, 1, 1)
    bg_t = bg if isinstance(bg, torch.Tensor) else torch.tensor(bg).view(1, 3, 1, 1)
    return (bg_t * (1 - mask) + fg_t * mask).clamp(0, 1)  # (N, 3, H, W)


def _centred(digits: torch.Tensor, _g: torch.Generator | None = None) -> torch.Tensor:
    return _centre(_upsample(digits, 24))  # (N, 1, 32, 32)


def render_prompt(digits: torch.Tensor, _gen: torch.Generator | None = None) -> torch.Tensor:
    """The neutral rendering (white on black, centred) used to embed class prompts; no task uses it."""
    return _paint(_centred(digits), (1, 1, 1), (0, 0, 0))


def _rotated(d: torch.Tensor, _g: torch.Generator) -> torch.Tensor:
    return torch.rot90(_centred(d), 1, dims=(-2, -1))


def _mirrored(d: torch.Tensor, _g: torch.Generator) -> torch.Tensor:
    return torch.flip(_centred(d), dims=(-1,))


def _corner(d: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A half-size digit in a random quadrant (layout)."""
    small = _upsample(d, 16)  # (N, 1, 16, 16)
    canvas = torch.zeros(d.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE)
    quadrant = torch.randint(0, 4, (d.shape[0],), generator=g)
    for q in range(4):
        rows, cols = (q // 2) * 16, (q % 2) * 16
        canvas[quadrant == q, :, rows:rows + 16, cols:cols + 16] = small[quadrant == q]
    return canvas


def _noisy(d: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noise = 0.3 * torch.rand(d.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return (_centred(d) + noise).clamp(0, 1)


def _stripes(n: int) -> torch.Tensor:
    stripe = (torch.arange(IMAGE_SIZE) // 4 % 2).float()  # (32,)
    bg = 0.55 + 0.2 * stripe.view(1, 1, 1, IMAGE_SIZE).expand(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    return bg  # (n, 3, 32, 32) vertical grey stripes


def _thick(d: torch.Tensor, _g: torch.Generator) -> torch.Tensor:
    """A thick, blurred digit (large upsample, then cropped)."""
    big = _upsample(d, 40)[:, :, 4:36, 4:36]  # (N, 1, 32, 32)
    blurred = F.avg_pool2d(big, 3, stride=1, padding=1, count_include_pad=False)
    return (1.5 * blurred).clamp(0, 1)


def random_style(digits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SimCLR-style augmentation of base digits (N, 8, 8) into (N, 3, 32, 32): random scale and
    position (random resized crop), random ink and paper colours (colour distortion), random blur
    and pixel noise. No rotation or mirroring, and never a task's exact rendering."""
    n = digits.shape[0]
    mask = _centred(digits)  # (N, 1, 32, 32)
    scale = 0.55 + 0.75 * torch.rand(n, generator=gen)  # digit size relative to the centred one
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - 0.6 * scale[:, None]).clamp(min=0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(theta, list(mask.shape), align_corners=False)
    mask = F.grid_sample(mask, grid, align_corners=False, padding_mode="zeros")
    blur = torch.rand(n, generator=gen) < 0.3
    mask = torch.where(blur.view(n, 1, 1, 1), F.avg_pool2d(mask, 3, stride=1, padding=1, count_include_pad=False), mask)
    noisy = (torch.rand(n, generator=gen) < 0.3).view(n, 1, 1, 1)
    mask = (mask + noisy * 0.3 * torch.rand(mask.shape, generator=gen)).clamp(0, 1)
    fg = torch.rand(n, 3, 1, 1, generator=gen)
    bg = torch.rand(n, 3, 1, 1, generator=gen)
    far = (fg - bg).abs().mean(dim=1, keepdim=True) < 0.3  # too little contrast: push paper away
    bg = torch.where(far, (fg + 0.5) % 1.0, bg)
    return (bg * (1 - mask) + fg * mask).clamp(0, 1)


TASKS: dict[str, DigitTask] = {t.name: t for t in (
    DigitTask("inverted", "Dark ink on white paper; which digit (10 classes).", _centred,
              (0.05, 0.05, 0.1), (0.95, 0.93, 0.88)),
    DigitTask("tinted", "Red digits on a green background; which digit.", _centred, (0.95, 0.2, 0.1), (0.1, 0.45, 0.15)),
    DigitTask("rotated", "Digits rotated 90° counter-clockwise, yellow on blue; which digit.", _rotated,
              (1.0, 0.9, 0.1), (0.05, 0.1, 0.5)),
    DigitTask("mirrored", "Mirror-image digits, white on purple; which digit.", _mirrored,
              (0.95, 0.95, 0.95), (0.45, 0.1, 0.45)),
    DigitTask("corner", "A half-size digit in a random quadrant, cyan on black; which digit.", _corner,
              (0.2, 0.95, 0.95), (0.0, 0.0, 0.0)),
    DigitTask("noisy", "Orange digits in heavy pixel noise; which digit.", _noisy, (1.0, 0.55, 0.1), (0.1, 0.1, 0.1)),
    DigitTask("parity", "Green digits on grey stripes; even or odd (label map).", _centred, (0.0, 0.35, 0.0), _stripes,
              ((0, 2, 4, 6, 8), (1, 3, 5, 7, 9)), ("even", "odd")),
    DigitTask("magnitude", "Thick blurred digits, blue on dark red; 0-4 or 5-9 (label map).", _thick,
              (0.7, 0.8, 1.0), (0.4, 0.05, 0.05), ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)), ("0-4", "5-9")),
)}


def render_split(task: DigitTask, indices: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1] and class labels (N,) of ``task`` for these base images."""
    images, digits = base_digits()
    gen = torch.Generator().manual_seed(seed)
    return task.render(images[indices], gen), task.labels(digits[indices])


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> encoder input (zero-centred, unit-ish scale)."""
    return (images - 0.5) / 0.25


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 for display."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
