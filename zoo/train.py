"""Training loops for the digits zoo.

- Pretraining: SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations", Eq. 1, the NT-Xent loss) on images pooled from every domain, with generic
  augmentations. It never sees a task label, so it is not one of the tasks.
- Fine-tuning: the whole encoder, cross-entropy on cosine logits against a *frozen* head of
  class embeddings (as when CLIP is fine-tuned with its zero-shot head frozen, Ilharco et al.
  2023 §2), AdamW with warm-up and cosine decay. The input stem (conv1, class/positional
  embeddings, ln_pre) may take a smaller learning rate (layer-wise learning-rate decay,
  Clark et al. 2020; Bao et al. 2022), as large pretrained ViTs barely move it.

Both loops are deterministic given a seed, a thread count and an attention kernel (``fixed_threads``
and ``attention_kernel``, both fixed by the recipe).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from open_clip.transformer import VisionTransformer

from merging.progress import Progress, silent

log = logging.getLogger(__name__)

STEM_PREFIXES = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")

# CPU kernels for scaled dot-product attention. "flash" is PyTorch's CPU default; with the zoo's
# 17-token sequences its backward pass costs ~11× its forward, and "math" (softmax(QKᵀ/√d)V
# written out) makes a pretraining step ~1.5× faster at 1 thread (benchmarks/train_step.py).
ATTENTION_KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


@dataclass(frozen=True)
class PretrainConfig:
    steps: int
    batch: int
    lr: float
    weight_decay: float = 0.05
    temperature: float = 0.2
    shift: int = 3
    views: str = "domains"  # how the two views are made (zoo.digits.VIEWS)
    easy: float = 0.5  # "styles" views: share of easy (jittered-copy) positive pairs
    domains: tuple[str, ...] | None = None  # "domains" views: the tasks whose renderings are pooled (None: all)


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int
    batch: int
    lr: float
    weight_decay: float = 0.0
    stem_lr_scale: float = 1.0
    logit_scale: float = 30.0
    shift: int = 2
    warmup: float = 0.1


def augment(images: torch.Tensor, shift: int, gen: torch.Generator, jitter: bool = False) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (edge-replicated), optional colour jitter."""  # (N, 3, H, W)
    n, _, h, w = images.shape
    padded = F.pad(images, (shift,) * 4, mode="replicate")  # (N, 3, H+2s, W+2s)
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, n), generator=gen))
    rows = (dy[:, None] + torch.arange(h)[None])  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None])  # (N, W)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]  # (N, 3, H, W)
    if jitter:
        scale = 0.6 + 0.8 * torch.rand(n, 3, 1, 1, generator=gen)
        offset = 0.3 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
        gray = torch.rand(n, 1, 1, 1, generator=gen) < 0.2
        out = (out * scale + offset).clamp(0, 1)
        out = torch.where(gray, out.mean(dim=1, keepdim=True).expand_as(out), out)
    return out


def _schedule(step: int, total: int, warmup: float) -> float:
    """Linear warm-up then cosine decay, as a multiplier of the base learning rate."""
    w = max(1, int(total * warmup))
    return (step + 1) / w if step < w else 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over a batch of positive pairs z1[i] ↔ z2[i] (each (N, D))."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])  # (2N,)
    return F.cross_entropy(sim, target)


Views = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # two (B, 3, H, W) encoder inputs


def pretrain(encoder: VisionTransformer, views: Views, cfg: PretrainConfig, seed: int,
             progress: Progress | None = None) -> None:
    """SimCLR: NT-Xent between two views of each of ``cfg.batch`` samples; trains ``encoder`` in place."""
    progress = progress or silent
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    encoder.train()
    for step in range(cfg.steps):
        first, second = views(cfg.batch, gen)
        _set_lr(opt, _schedule(step, cfg.steps, 0.05))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nt_xent(encoder(first).float(), encoder(second).float(), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("pretrain step %d/%d loss %.3f", step + 1, cfg.steps, loss.item())
            progress((step + 1) / cfg.steps, f"pretraining step {step + 1}/{cfg.steps} (loss {loss.item():.2f})")
    encoder.eval()


def _param_groups(encoder: VisionTransformer, cfg: FinetuneConfig) -> list[dict]:
    named = list(encoder.named_parameters())
    stem = [p for n, p in named if n.startswith(STEM_PREFIXES)]
    rest = [p for n, p in named if not n.startswith(STEM_PREFIXES)]
    return [{"params": stem, "lr": cfg.lr * cfg.stem_lr_scale, "base_lr": cfg.lr * cfg.stem_lr_scale},
            {"params": rest, "lr": cfg.lr, "base_lr": cfg.lr}]


def finetune(encoder: VisionTransformer, images: torch.Tensor, labels: torch.Tensor, head: torch.Tensor,
             cfg: FinetuneConfig, seed: int, preprocess, progress: Progress | None = None) -> None:
    """Fine-tune ``encoder`` in place on images (N, 3, H, W) / labels (N,) with frozen ``head`` (C, D)."""
    progress = progress or silent
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frozen = F.normalize(head.detach().float(), dim=-1)  # (C, D), never trained
    opt = torch.optim.AdamW(_param_groups(encoder, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    encoder.train()
    for step in range(cfg.steps):
        pick = torch.randint(0, images.shape[0], (cfg.batch,), generator=gen)
        x = preprocess(augment(images[pick], cfg.shift, gen))
        _set_lr(opt, _schedule(step, cfg.steps, cfg.warmup))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = F.normalize(encoder(x).float(), dim=-1)  # (B, D)
        loss = F.cross_entropy(cfg.logit_scale * feats @ frozen.T, labels[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            progress((step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps} (loss {loss.item():.2f})")
    encoder.eval()


@contextmanager
def fixed_threads(count: int | None) -> Iterator[None]:
    """Train with ``count`` torch CPU threads (None: as set), then restore the setting. A recipe
    fixes it because the trained weights depend on it: the digits recipe built with 2 threads
    instead of 1 lands on different weights and merges 3–10 points apart."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def attention_kernel(name: str | None) -> Iterator[None]:
    """Train with one of ``ATTENTION_KERNELS`` (None: "flash", PyTorch's CPU default, pinned so
    that recipes trained before the choice existed rebuild the same). A recipe fixes it, as it
    fixes the thread count: the kernels round differently, so the trained weights depend on it."""
    name = name or "flash"
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; known: {', '.join(ATTENTION_KERNELS)}")
    with sdpa_kernel(ATTENTION_KERNELS[name]):
        yield


def state_of(encoder: VisionTransformer) -> dict[str, torch.Tensor]:
    """A detached float32 copy of the encoder's weights."""
    return {k: v.detach().float().clone() for k, v in encoder.state_dict().items()}


def finetune_settings(recipe: Mapping, task: str) -> dict:
    """One task's fine-tuning settings: the recipe's shared ``finetune`` dict updated with the
    task's entry in ``task_finetune`` (tasks may train for different steps or rates, as the
    task_vectors recipe trains each dataset for its own number of epochs)."""
    return {**recipe["finetune"], **recipe.get("task_finetune", {}).get(task, {})}


def pretrain_config(recipe: Mapping) -> PretrainConfig:
    return PretrainConfig(**recipe["pretrain"])


def finetune_config(recipe: Mapping, task: str) -> FinetuneConfig:
    return FinetuneConfig(**finetune_settings(recipe, task))
