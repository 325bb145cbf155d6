"""What a full evaluation costs on CPU: images per second of a ViT-B/32 image tower, as the
accuracy views score (``zoo.model.load_encoder`` + ``encode`` on CLIP-preprocessed 224² batches),
and of decoding and cropping JPEGs (``zoo.data.Preprocess.crop``), in process.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.eval_speed [--threads 2] [--images 256] [--side 256]

The tower has ViT-B/32's shapes (224², patch 32, width 768, 12 layers, 12 heads, 512-d output) and
random weights (speed does not depend on them). Decoding reads ``--images`` JPEGs of ``--side``²
pixels written to a temporary folder. Printed: each rate, the combined rate (one decode and one
forward pass per image), and the time of the paper's eight test sets at that rate, from their
published sizes (``TEST_SIZES``). Each rate is the best of ``--repeat`` runs.

Two clocks: wall time (what a user waits on an otherwise idle machine) and the process's CPU
time (all threads), which other jobs on a shared machine barely disturb; images per CPU-second ×
the cores used estimates the wall rate on idle cores (an upper bound: thread scaling is not
perfect). On a busy machine, read the CPU-time line.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from merging.runtime import use_huge_pages
from zoo.data import Preprocess
from zoo.model import VitConfig, build_encoder, encode, load_encoder

log = logging.getLogger("benchmarks.eval_speed")

VIT_B_32 = VitConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12, mlp_ratio=4.0, output_dim=512,
                     act="quick_gelu")
# test images per task as the authors define the test split (MNIST t10k, SVHN test, EuroSAT_splits/test,
# dtd/val, sun397/val, RESISC45's test list, GTSRB Final_Test, Stanford Cars test)
TEST_SIZES = {"MNIST": 10_000, "SVHN": 26_032, "EuroSAT": 2_700, "DTD": 1_880, "SUN397": 19_850,
              "RESISC45": 6_300, "GTSRB": 12_630, "Cars": 8_041}


def best_rate(work: Callable[[], object], count: int, repeat: int) -> tuple[float, float]:
    """Items per wall second and per CPU second of ``work()`` (which handles ``count`` items),
    each the best of ``repeat`` runs."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return count / min(wall), count / min(cpu)


def encode_rate(batch: int, repeat: int) -> tuple[float, float]:
    state = build_encoder(VIT_B_32).state_dict()
    encoder = load_encoder(state, VIT_B_32, "cpu")
    images = torch.randn(batch, 3, 224, 224)  # (b, 3, 224, 224), already normalised
    encode(encoder, images[:8])  # warm-up
    return best_rate(lambda: encode(encoder, images), batch, repeat)


def decode_rate(count: int, side: int, repeat: int) -> tuple[float, float]:
    prep = Preprocess(224)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i in range(count):
            path = Path(folder) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, quality=90)
            files.append(path)

        def work() -> None:
            for path in files:
                with Image.open(path) as image:
                    prep.crop(image)

        return best_rate(work, count, repeat)


def main(argv: Sequence[str] | None = None) -> None:
    use_huge_pages()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=256, help="batch of the forward pass and JPEGs decoded")
    p.add_argument("--side", type=int, default=256, help="side of the JPEGs decoded")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    forward = encode_rate(args.images, args.repeat)
    decode = decode_rate(args.images, args.side, args.repeat)
    total = sum(TEST_SIZES.values())
    for clock, i, unit in (("wall", 0, "images/s"), ("CPU", 1, "images per CPU-second")):
        both = 1.0 / (1.0 / forward[i] + 1.0 / decode[i])
        print(f"[{clock} time] ViT-B/32 forward, {args.threads} threads, batch {args.images}: {forward[i]:.1f} {unit}; "
              f"decode + crop of {args.side}² JPEGs: {decode[i]:.1f}; together: {both:.1f}; the eight test sets "
              f"({total} images): {total / both / 60:.0f} min per model; SUN397's {TEST_SIZES['SUN397']}: "
              f"{TEST_SIZES['SUN397'] / both / 60:.1f} min")


if __name__ == "__main__":
    main()
