"""The embedded digits zoo (docs/design.md, Where models come from, item 1): a tiny open_clip ViT pretrained with SimCLR on pooled
digit images, then fine-tuned per task with frozen class-embedding heads, on the eight tasks of
``zoo.digits_data``. A miniature of the 8-task ViT-B/32 setting of Ilharco et al. 2023 and of
"No Task Left Behind" (Marczak et al., ICML 2025, §5).

Heads are zero-shot style (CLIP, Radford et al. 2021, §3.1.4): one fixed embedding per digit
and task, a prompt ensemble of the mean pretrained feature of that digit in a neutral "prompt"
rendering that no task uses and in the task's palette prompt (its colours, the digit upright and
centred), weighted by the recipe's ``palette_prompt``; a label-map class (e.g. "even") embeds as
the mean of its digits' embeddings. Heads are never trained.

Everything follows from a *recipe* (a dict); its hash is the fingerprint. Built zoos live in
``$ISOSCOPE_CACHE/zoo`` (default ``~/.cache/isoscope``); pretraining and each task's fine-tuning
are cached separately, every write is atomic, so an interrupted build resumes cleanly. A zoo file
holds θ0 and the task vectors τt in fp16 (so τt keeps its precision), the heads in fp32, and the
recipe and fingerprint in its metadata; ``assets/zoo/`` ships the default one prebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from merging.device import pick_device
from merging.errors import IsoscopeError
from merging.io import load_state_dict, save_safetensors
from merging.once import OnceCache
from merging.paths import cache_root
from merging.progress import Progress, scaled, silent
from merging.tensors import StateDict
from zoo import digits_data as dd
from zoo import train
from zoo.base import SPLITS, Zoo
from zoo.model import VitConfig, accuracy, build_encoder, encode, load_encoder

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "zoo"
RECIPE_VERSION = 1

RECIPES: dict[str, dict] = {
    "digits": {
        "version": RECIPE_VERSION, "seed": 0, "tasks": list(dd.TASKS), "threads": 1,
        "data": {"test": 497, "val": 200, "train": 1100},
        "model": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "heads": 2, "output_dim": 64},
        "pretrain": {"steps": 2400, "batch": 256, "lr": 1e-3, "weight_decay": 0.05, "temperature": 0.2},
        "finetune": {"steps": 100, "batch": 64, "lr": 3e-4, "weight_decay": 0.0, "stem_lr_scale": 0.1,
                     "logit_scale": 30.0},
        # colour, texture and label-map tasks train longer and harder than the geometric ones
        "task_finetune": {t: {"steps": 600, "lr": 5.5e-4} for t in ("tinted", "noisy", "parity", "magnitude")},
        "palette_prompt": 0.35,  # each head ensembles the neutral prompt and the task's palette prompt
    },
    "digits-tiny": {
        "version": RECIPE_VERSION, "seed": 0, "tasks": list(dd.TASKS),
        "data": {"test": 120, "val": 80, "train": 300},
        "model": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 1, "output_dim": 32},
        "pretrain": {"steps": 40, "batch": 64, "lr": 2e-3, "weight_decay": 0.05, "temperature": 0.2},
        "finetune": {"steps": 20, "batch": 32, "lr": 2e-3, "weight_decay": 0.0, "stem_lr_scale": 0.1,
                     "logit_scale": 30.0},
    },
}


# --- fingerprints and paths ------------------------------------------------------------------

def fingerprint_of(obj: object) -> str:
    """A short stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain_part(recipe: Mapping) -> dict:
    keys = ("version", "seed", "tasks", "data", "model", "pretrain", "threads", "attention")
    return {k: recipe[k] for k in keys if k in recipe}


def _head_part(recipe: Mapping) -> dict:
    """What of the recipe shapes the heads beyond θ0 (a fine-tune depends on its frozen head)."""
    return {k: recipe[k] for k in ("palette_prompt",) if k in recipe}


def cache_dir() -> Path:
    """``$ISOSCOPE_CACHE/zoo`` (default ``~/.cache/isoscope/zoo``)."""
    return cache_root() / "zoo"


def _seed(recipe: Mapping, *parts: str) -> int:
    return zlib.crc32("/".join([str(recipe["seed"]), *parts]).encode())


# --- data ------------------------------------------------------------------------------------

def task_split(recipe: Mapping, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1] and labels (N,) of one task's split, as the recipe fixes them."""
    indices = dd.split_indices(recipe["data"], recipe["seed"])[split]
    return dd.render_split(dd.TASKS[task], indices, _seed(recipe, task, split))


def _train_digits(recipe: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """The base images (N, 8, 8) and digits (N,) of the train split (prompts are rendered from them)."""
    images, digits = dd.base_digits()
    train_idx = dd.split_indices(recipe["data"], recipe["seed"])["train"]
    return images[train_idx], digits[train_idx]


def _prompt_images(recipe: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    images, digits = _train_digits(recipe)
    return dd.render_prompt(images), digits


def _domain_views(recipe: Mapping, cfg: train.PretrainConfig) -> train.Views:
    """Two jittered copies of images pooled from the task domains ``cfg.domains`` (default: every
    task's) and the prompt rendering. Leaving a domain out of pretraining makes its task far from
    θ0, as CLIP's pretraining is far from MNIST or SVHN."""
    parts = [task_split(recipe, t, "train")[0] for t in (cfg.domains or recipe["tasks"])]
    pool = torch.cat(parts + [_prompt_images(recipe)[0]])  # (M, 3, 32, 32)

    def views(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = pool[torch.randint(0, pool.shape[0], (batch,), generator=gen)]
        return tuple(dd.preprocess(train.augment(x, cfg.shift, gen, jitter=True)) for _ in range(2))

    return views


def _style_views(recipe: Mapping, cfg: train.PretrainConfig) -> train.Views:
    """A random style (scale, position, colours, blur, noise) of a base train digit, paired with
    either a jittered copy of itself (probability ``cfg.easy``) or another random style of the
    same digit: the hard pairs alone are too hard for a tiny ViT at the start (it collapses)."""
    images = dd.base_digits()[0][dd.split_indices(recipe["data"], recipe["seed"])["train"]]  # (N, 8, 8)

    def views(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[torch.randint(0, images.shape[0], (batch,), generator=gen)]
        first = dd.random_style(x, gen)  # (B, 3, 32, 32)
        other = dd.random_style(x, gen)
        jittered = train.augment(first, cfg.shift, gen, jitter=True)
        pick = (torch.rand(batch, generator=gen) < cfg.easy).view(batch, 1, 1, 1)
        return dd.preprocess(first), dd.preprocess(torch.where(pick, jittered, other))

    return views


VIEWS = {"domains": _domain_views, "styles": _style_views}


# --- heads -----------------------------------------------------------------------------------

def _digit_means(encoder: torch.nn.Module, images: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """One unit embedding per digit (10, D): the mean feature of that digit's images."""
    feats = encode(encoder, dd.preprocess(images))  # (N, D)
    means = torch.stack([feats[digits == d].mean(0) for d in range(10)])  # (10, D)
    return torch.nn.functional.normalize(means, dim=-1)


def _prompt_embeddings(encoder: torch.nn.Module, recipe: Mapping, render: Callable[[torch.Tensor], torch.Tensor]
                       ) -> torch.Tensor:
    """One unit embedding per digit (10, D): the mean feature of the train digits drawn by ``render``."""
    images, digits = _train_digits(recipe)
    return _digit_means(encoder, render(images), digits)


def digit_embeddings(pretrained: StateDict, recipe: Mapping) -> torch.Tensor:
    """One unit embedding per digit (10, D): the mean θ0 feature of its neutral prompt renderings."""
    return _prompt_embeddings(load_encoder(pretrained, VitConfig(**recipe["model"]), "cpu"), recipe, dd.render_prompt)


def head_embeddings(pretrained: StateDict, recipe: Mapping) -> dict[str, torch.Tensor]:
    """Each task's digit embeddings (10, D): a weighted prompt ensemble, as CLIP averages the
    embeddings of several templates, of the neutral prompt and the task's palette prompt
    (``DigitTask.prompt``) with the recipe's weight ``palette_prompt`` (absent: 0, every task
    shares the neutral prompt's embeddings)."""
    encoder = load_encoder(pretrained, VitConfig(**recipe["model"]), "cpu")
    neutral = _prompt_embeddings(encoder, recipe, dd.render_prompt)  # (10, D)
    weight = float(recipe.get("palette_prompt", 0.0))
    if not weight:
        return {task: neutral for task in recipe["tasks"]}
    out = {}
    for task in recipe["tasks"]:
        palette = _prompt_embeddings(encoder, recipe, dd.TASKS[task].prompt)  # (10, D)
        out[task] = torch.nn.functional.normalize((1 - weight) * neutral + weight * palette, dim=-1)
    return out


def task_head(task: str, digit_emb: torch.Tensor) -> torch.Tensor:
    """The frozen head (C, D) of a task: each class embeds as the mean of its digits' embeddings."""
    rows = [digit_emb[list(members)].mean(0) for members in dd.TASKS[task].classes]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


# --- building --------------------------------------------------------------------------------

def _half(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def _pretrained_state(recipe: Mapping, progress: Progress) -> StateDict:
    """θ0 as stored (fp16), from the pretraining cache or trained now."""
    path = cache_dir() / f"pretrain-{fingerprint_of(_pretrain_part(recipe))}.safetensors"
    if path.is_file():
        log.info("pretraining: cached at %s", path)
        return load_state_dict(path)
    torch.manual_seed(recipe["seed"])
    encoder = build_encoder(VitConfig(**recipe["model"]))
    cfg = train.pretrain_config(recipe)
    train.pretrain(encoder, VIEWS[cfg.views](recipe, cfg), cfg, _seed(recipe, "pretrain"),
                   lambda f, m: progress(f, f"Pretraining the encoder: {m}"))
    state = _half(train.state_of(encoder))
    save_safetensors(state, path)
    return state


def _task_vector(recipe: Mapping, task: str, theta0: StateDict, head: torch.Tensor,
                 progress: Progress) -> StateDict:
    """τt (fp16) from the fine-tuning cache or trained now from θ0 with the frozen head."""
    key = fingerprint_of({"pretrain": _pretrain_part(recipe), "finetune": train.finetune_settings(recipe, task),
                          "task": task, **_head_part(recipe)})
    path = cache_dir() / f"finetune-{task}-{key}.safetensors"
    if path.is_file():
        return load_state_dict(path)
    start = {k: v.float() for k, v in theta0.items()}
    encoder = load_encoder(start, VitConfig(**recipe["model"]), "cpu")
    images, labels = task_split(recipe, task, "train")
    cfg = train.finetune_config(recipe, task)
    train.finetune(encoder, images, labels, head, cfg, _seed(recipe, "finetune", task), dd.preprocess,
                   lambda f, m: progress(f, f"Fine-tuning on {task}: {m}"))
    tau = _half({k: v - start[k] for k, v in train.state_of(encoder).items()})
    save_safetensors(tau, path)
    return tau


def build(recipe: Mapping, out: Path, progress: Progress | None = None) -> Path:
    """Build the zoo of ``recipe`` into the file ``out`` (atomic) and return ``out``."""
    progress = progress or silent
    with train.fixed_threads(recipe.get("threads")), train.attention_kernel(recipe.get("attention")):
        return _build(recipe, out, progress)


def _build(recipe: Mapping, out: Path, progress: Progress) -> Path:
    theta0 = _pretrained_state(recipe, scaled(progress, 0.0, 0.4))
    embeddings = head_embeddings({k: v.float() for k, v in theta0.items()}, recipe)
    tensors: StateDict = {f"pretrained.{k}": v for k, v in theta0.items()}
    tasks = list(recipe["tasks"])
    for i, task in enumerate(tasks):
        head = task_head(task, embeddings[task])
        span = scaled(progress, 0.4 + 0.6 * i / len(tasks), 0.4 + 0.6 * (i + 1) / len(tasks))
        tau = _task_vector(recipe, task, theta0, head, span)
        tensors.update({f"task_vector.{task}.{k}": v for k, v in tau.items()})
        tensors[f"head.{task}"] = head.float()
    meta = {"fingerprint": fingerprint_of(recipe), "recipe": json.dumps(recipe, sort_keys=True),
            "format": "isoscope-digits-zoo/1"}
    save_safetensors(tensors, out, meta)
    progress(1.0, "Digits zoo ready")
    return out


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def zoo_file(name: str, progress: Progress | None = None) -> Path:
    """The file holding zoo ``name``: the shipped asset when its fingerprint matches, else the cache
    (built now when missing)."""
    recipe = RECIPES[name]
    fp = fingerprint_of(recipe)
    shipped = ASSETS / f"{name}.safetensors"
    if shipped.is_file() and read_metadata(shipped).get("fingerprint") == fp:
        return shipped
    cached = cache_dir() / f"{name}-{fp}.safetensors"
    if cached.is_file():
        return cached
    log.info("building the %s zoo into %s", name, cached)
    return build(recipe, cached, progress)


# --- the zoo ---------------------------------------------------------------------------------

class DigitsZoo(Zoo):
    """A built digits zoo, loaded from one file; evaluation caches split tensors on the device."""

    def __init__(self, path: Path, device: str | torch.device | None = None) -> None:
        meta = read_metadata(path)
        self.path = Path(path)
        self.recipe: dict = json.loads(meta["recipe"])
        self._fingerprint = meta["fingerprint"]
        self.name = next((n for n, r in RECIPES.items() if r == self.recipe), f"digits-{self._fingerprint[:6]}")
        self.tasks = list(self.recipe["tasks"])
        self.config = VitConfig(**self.recipe["model"])
        raw = load_state_dict(path)
        self._theta0 = {k[len("pretrained."):]: v.float() for k, v in raw.items() if k.startswith("pretrained.")}
        self._tau = {t: {k: raw[f"task_vector.{t}.{k}"].float() for k in self._theta0} for t in self.tasks}
        self.heads = {t: raw[f"head.{t}"].float() for t in self.tasks}
        self._device = pick_device(device)
        self._encoder = build_encoder(self.config).to(self._device).eval()
        self._encoder_lock = threading.Lock()
        self._splits: OnceCache[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OnceCache()  # shared by sessions
        self._batches: OnceCache[tuple[tuple[str, ...], str], torch.Tensor] = OnceCache()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def results_asset(self) -> Path | None:
        """The shipped results of this zoo (``analysis.seed``), when this is the shipped zoo."""
        shipped = ASSETS / f"{self.name}-results.sqlite"
        return shipped if self.path.parent == ASSETS and shipped.is_file() else None

    @property
    def device(self) -> torch.device:
        return self._device

    def pretrained(self) -> StateDict:
        return self._theta0

    def task_vector(self, task: str) -> StateDict:
        """τt (float32 from the stored fp16), the exact difference finetuned − pretrained."""
        return self._tau[self._check(task)]

    def finetuned(self, task: str) -> StateDict:
        return {k: v + self._tau[self._check(task)][k] for k, v in self._theta0.items()}

    def _check(self, task: str) -> str:
        if task not in self._tau:
            raise IsoscopeError(f"unknown task {task!r}; this zoo has: {', '.join(self.tasks)}")
        return task

    # data
    def split(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images (N, 3, 32, 32) on the device and labels (N,) of a task's split."""
        if split not in (*SPLITS, "train"):
            raise IsoscopeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        key = (self._check(task), split)
        return self._splits.get(key, lambda: self._read_split(*key))

    def _read_split(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = task_split(self.recipe, task, split)
        return dd.preprocess(images).to(self._device), labels.to(self._device)

    def task_info(self, task: str) -> dict:
        spec = dd.TASKS[self._check(task)]
        return {"name": task, "description": spec.description, "num_classes": len(spec.classes),
                "class_names": list(spec.class_names), "sizes": dict(self.recipe["data"])}

    def examples(self, task: str, n: int = 8) -> np.ndarray:
        """The first ``n`` test images of ``task`` as uint8 (n, 32, 32, 3)."""
        return dd.to_uint8(task_split(self.recipe, self._check(task), "test")[0][:n])

    # evaluation
    def _load(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self._encoder.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)

    def _batch(self, tasks: tuple[str, ...], split: str) -> torch.Tensor:
        key = (tasks, split)
        return self._batches.get(key, lambda: torch.cat([self.split(t, split)[0] for t in tasks]))  # (ΣN, 3, 32, 32)

    @torch.no_grad()
    def evaluate_tasks(self, state_dict: StateDict, tasks: Iterable[str] | None = None,
                       split: str = "test") -> dict[str, float]:
        """Top-1 accuracy per task: one encoder load and one batched forward over every task."""
        names = tuple(self._check(t) for t in (tasks or self.tasks))
        with self._encoder_lock:  # one encoder, shared by every session: load and forward together
            self._load(state_dict)
            feats = encode(self._encoder, self._batch(names, split), batch_size=256)  # (ΣN, D)
        out, start = {}, 0
        for task in names:
            labels = self.split(task, split)[1]
            out[task] = accuracy(feats[start:start + labels.shape[0]], self.heads[task], labels)
            start += labels.shape[0]
        return out

    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        return self.evaluate_tasks(state_dict, [task], split)[task]


def load_digits_zoo(spec: str = "digits", *, device: str | torch.device | None = None,
                    progress: Progress | None = None, **_unused: object) -> DigitsZoo:
    """The digits zoo named ``spec`` ("digits" or "digits-tiny"), built on first use."""
    if spec not in RECIPES:
        raise IsoscopeError(f"unknown digits zoo {spec!r}; choose one of: {', '.join(RECIPES)}")
    return DigitsZoo(zoo_file(spec, progress), device=device)

