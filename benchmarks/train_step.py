"""One training step of the digits zoo under each CPU attention kernel, as a ratio in one run.

    .venv/bin/python -m benchmarks.train_step [--threads 1] [--steps 8]

The digits recipe's encoder (17 tokens a sequence, width 128) trains a few SimCLR steps (batch
256, two views) and a few fine-tuning steps (batch 64) with PyTorch's default CPU kernel for
scaled dot-product attention (flash attention) and with the plain "math" kernel that a recipe can
choose (``"attention": "math"``, see ``zoo.train.ATTENTION_KERNELS``). Each kernel starts from
the same weights and batches; the median step after one warm-up is printed, and the ratio
flash / math.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch

from zoo import digits as D
from zoo import digits_data as dd
from zoo import train
from zoo.model import VitConfig, build_encoder

log = logging.getLogger("benchmarks.train_step")


def _timed_steps(run: Callable[[int], None], steps: int) -> float:
    """Median seconds of one step over ``steps`` single-step runs, after one warm-up run."""
    run(1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run(1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrain_step(recipe: dict, steps: int) -> float:
    torch.manual_seed(0)
    encoder = build_encoder(VitConfig(**recipe["model"]))
    cfg = train.pretrain_config(recipe)
    views = D.VIEWS[cfg.views](recipe, cfg)

    def run(n: int) -> None:
        one = train.PretrainConfig(**{**recipe["pretrain"], "steps": n})
        train.pretrain(encoder, views, one, seed=0)

    return _timed_steps(run, steps)


def finetune_step(recipe: dict, steps: int) -> float:
    torch.manual_seed(0)
    encoder = build_encoder(VitConfig(**recipe["model"]))
    task = recipe["tasks"][0]
    images, labels = D.task_split(recipe, task, "train")
    head = torch.randn(10, recipe["model"]["output_dim"])

    def run(n: int) -> None:
        one = train.FinetuneConfig(**{**train.finetune_settings(recipe, task), "steps": n})
        train.finetune(encoder, images, labels, head, one, 0, dd.preprocess)

    return _timed_steps(run, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("zoo").setLevel(logging.WARNING)  # not the training loops' step lines
    torch.set_num_threads(args.threads)
    recipe = D.RECIPES["digits"]
    for name, step in (("pretraining step (batch 256 × 2 views)", pretrain_step),
                       ("fine-tuning step (batch 64)", finetune_step)):
        seconds = {}
        for kernel in ("flash", "math"):
            with train.attention_kernel(kernel):
                seconds[kernel] = step(recipe, args.steps)
        cells = ", ".join(f"{kernel} {s * 1e3:.0f} ms" for kernel, s in seconds.items())
        log.info("%s at %d thread(s): %s; flash / math = %.2f×", name, args.threads, cells,
                 seconds["flash"] / seconds["math"])


if __name__ == "__main__":
    main()
