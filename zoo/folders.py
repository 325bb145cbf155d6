"""Real checkpoint folders as a zoo (docs/design.md, Where models come from, items 2–5).

``open_folder(path)`` detects the layout (``zoo.layouts``), opens every checkpoint lazily
through ``merging.io`` and presents each one under open_clip ``VisionTransformer`` key names:
a *plan* per file maps each open_clip key to the stored key(s) it comes from (a prefix strip
for ``model.visual.*`` files, the Hugging Face renaming of ``zoo.hf`` otherwise), so everything
downstream sees one naming whatever the layout. Keys and shapes of every task are checked
against θ0 on open from file headers alone; NaN/Inf when a state dict is first loaded.

Scoring follows the task_vectors ``ClassificationHead`` (Ilharco et al. 2023): logits = W·f̂ + b
with f̂ the L2-normalised image feature and (W, b) the stored head (C, D), (C,).

Public API:
- ``detect_layout(path) -> str``; ``open_folder(path, data=None, trust_pickle=False, device=None)``;
  ``open_files(pretrained, finetuned, heads=None, ...)`` for explicit file lists.
- ``FolderZoo``: the ``Zoo`` over a folder (``tasks``, ``pretrained()``, ``finetuned(t)``,
  ``fingerprint``, ``has_data``, ``missing()``, ``evaluate``, ``evaluate_tasks``).
- ``convert_folder(path, out, trust_pickle=False)``: write any layout once as safetensors in
  the ``plain`` layout (the safe form of pickled folders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from merging.device import pick_device
from merging.errors import CheckpointError, IsoscopeError, UntrustedPickleError
from merging.io import Checkpoint, load_state_dict, open_checkpoint, save_safetensors, write_text_atomic
from merging.paths import allowed_path
from merging.progress import Progress, silent
from merging.tensors import StateDict, check_compatible, check_state_finite
from zoo.base import SPLITS, Zoo
from zoo.data import ImageFolderData, Preprocess
from zoo.hf import Plan, apply_recipe, hf_plan, is_hf_state, open_clip_rank, read_hf_config, recipe_shape
from zoo.layouts import HF_WEIGHTS, OPTIONS_FILE, FolderFiles, detect_layout, find_layout, hf_weights_file
from zoo.model import encode, infer_vit_config, load_encoder, state_prefix

log = logging.getLogger(__name__)

__all__ = ["FolderZoo", "Head", "convert_folder", "detect_layout", "open_files", "open_folder"]

HEADER_BYTES = 4096  # bytes of each file hashed into the fingerprint (safetensors header, pickle opening)
INHERITED = ("proj",)  # keys a fine-tune may omit and take from θ0 (HF vision-only saves)


class MappedCheckpoint(Mapping[str, torch.Tensor]):
    """A lazy, read-only view of one checkpoint under open_clip visual-tower names."""

    def __init__(self, source: Checkpoint, plan: Plan) -> None:
        self.source, self.plan = source, plan

    def __getitem__(self, key: str) -> torch.Tensor:
        return apply_recipe(self.plan[key], self.source.__getitem__)

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def shape(self, key: str) -> tuple[int, ...]:
        return recipe_shape(self.plan[key], self.source.shape)


def visual_plan(source: Mapping[str, torch.Tensor]) -> Plan:
    """open_clip key -> recipe for a checkpoint holding an open_clip or Hugging Face visual tower."""
    if is_hf_state(source):
        plan = hf_plan(source)
    else:
        prefix = state_prefix(source)
        plan = {k[len(prefix):]: ("copy", (k,)) for k in source if k.startswith(prefix)}
    return dict(sorted(plan.items(), key=lambda item: open_clip_rank(item[0])))  # safetensors sorts by name


def open_visual(path: Path, trust_pickle: bool = False) -> MappedCheckpoint:
    """The visual tower stored at ``path`` (a checkpoint file or a Hugging Face folder), lazily."""
    if path.is_dir():
        path = hf_weights_file(path) or path / HF_WEIGHTS[0]  # a missing file gets open_checkpoint's message
    source = open_checkpoint(path, trust_pickle=trust_pickle)
    return MappedCheckpoint(source, visual_plan(source))


def _meta(view: MappedCheckpoint | _Overlay) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins (meta tensors) of a view: checks without reading any values."""
    return {k: torch.empty(view.shape(k), device="meta") for k in view}


@dataclass(frozen=True)
class Head:
    """A frozen linear head: logits (N, C) = features (N, D) @ weight.T (D, C) + bias (C,)."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor | None = None  # (C,)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted class (N,) for normalised features (N, D)."""
        logits = features @ self.weight.to(features).T  # (N, C)
        if self.bias is not None:
            logits = logits + self.bias.to(features)
        return logits.argmax(dim=-1)


def read_head(path: Path, width: int, trust_pickle: bool = False) -> Head:
    """A head file: a state dict with ``weight`` (C, D) and optionally ``bias`` (C,)."""
    state = load_state_dict(path, trust_pickle=trust_pickle)
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or weight.ndim != 2 or set(state) - {"weight", "bias"}:
        raise CheckpointError(f"{path}: a head holds 'weight' (classes, {width}) and optionally 'bias'; "
                              f"found {', '.join(f'{k} {tuple(v.shape)}' for k, v in state.items())}")
    if weight.shape[1] != width or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        raise CheckpointError(f"{path}: head shapes weight {tuple(weight.shape)}"
                              f"{'' if bias is None else f', bias {tuple(bias.shape)}'} do not fit "
                              f"{width}-dimensional features")
    check_state_finite(state, str(path))
    return Head(weight.float(), None if bias is None else bias.float())


class FolderZoo(Zoo):
    """A zoo over checkpoint files found by ``zoo.layouts``; state dicts are loaded once, shared."""

    def __init__(self, files: FolderFiles, data: str | Path | None = None, trust_pickle: bool = False,
                 device: str | torch.device | None = None) -> None:
        if files.pickled and not trust_pickle:
            raise UntrustedPickleError(_untrusted_message(files))
        self.files, self.name, self.tasks = files, files.root.name, list(files.tasks)
        self._trust, self._device = trust_pickle, device
        for path in self._files():  # served mode: no symlink inside the folder may lead outside
            allowed_path(path)
        self._base = open_visual(files.pretrained, trust_pickle)
        self._views = {t: self._task_view(t) for t in self.tasks}
        settings = self._settings()
        config = infer_vit_config(_meta(self._base), heads=settings.get("heads"))
        self.config = dataclasses.replace(config, act=settings["act"])
        self.preprocess = Preprocess(self.config.image_size, **{k: tuple(settings[k]) for k in ("mean", "std")
                                                                if settings.get(k)})
        self.data = ImageFolderData(data) if data is not None else None
        self._states: dict[str, StateDict] = {}
        self._heads: dict[str, Head] = {}

    def _task_view(self, task: str) -> Mapping[str, torch.Tensor]:
        view = open_visual(self.files.tasks[task], self._trust)
        inherited = [k for k in INHERITED if k in self._base and k not in view]
        if inherited:  # HF CLIPVisionModel fine-tunes leave the (frozen) projection out
            log.info("task %s: taking %s from the pretrained model", task, ", ".join(inherited))
            view = _Overlay(view, self._base, inherited)
        check_compatible(_meta(self._base), _meta(view),
                         f"fine-tuned checkpoint of task {task} ({self.files.tasks[task]})")
        return view

    def _settings(self) -> dict:
        """act, heads, mean, std: the layout's defaults < a Hugging Face config < isoscope.json."""
        hf = dataclasses.asdict(read_hf_config(self.files.pretrained)) if self.files.layout == "hf" else {}
        return {"act": self.files.act} | {k: v for k, v in hf.items() if v} | self.files.options

    @property
    def device(self) -> torch.device:
        return pick_device(self._device)

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.files.layout, self.config.as_dict(),
                                            dataclasses.astuple(self.preprocess)]).encode())
        for path in self._files():
            _hash_file(digest, path, self.files.root)
        if self.data is not None:
            for task in self.tasks:
                folder = self.data.task_dir(task)
                for path in sorted(folder.rglob("*")) if folder else []:
                    _hash_stat(digest, path, self.data.root)
        return digest.hexdigest()[:16]

    def _files(self) -> list[Path]:
        paths = [self.files.pretrained, *self.files.tasks.values(), *self.files.heads.values(),
                 self.files.root / OPTIONS_FILE]
        return [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p]) if f.is_file()]

    def pretrained(self) -> StateDict:
        return self._load("", self._base)

    def finetuned(self, task: str) -> StateDict:
        if task not in self._views:
            raise IsoscopeError(f"unknown task {task!r}; tasks: {', '.join(self.tasks)}")
        return self._load(task, self._views[task])

    def _load(self, name: str, view: Mapping[str, torch.Tensor]) -> StateDict:
        if name not in self._states:
            self._states[name] = _read_checked(view, self.files.tasks.get(name, self.files.pretrained))
        return self._states[name]

    def missing(self, split: str | None = None, tasks: Iterable[str] | None = None) -> list[str]:
        """What evaluating ``tasks`` on ``split`` (default: all, both splits) still needs, one line per
        gap; empty when every accuracy view works."""
        tasks = list(tasks or self.tasks)
        if self.data is None:
            return ["no evaluation data folder was given (expected <data>/<Task>/val|test/<class>/<image>)"]
        gaps = [f"no head file for task {t} (head_{t}.safetensors with weight (classes, "
                f"{self._width}) in {self.files.root})" for t in tasks if t not in self.files.heads]
        for s in ([split] if split else SPLITS):
            absent = self.data.missing(tasks, s)
            gaps += [f"no {s} data for {', '.join(absent)} in {self.data.root}"] if absent else []
        return gaps

    @property
    def has_data(self) -> bool:
        return not self.missing()

    @property
    def _width(self) -> int:
        return self.config.output_dim

    def head(self, task: str) -> Head:
        """The frozen head of ``task`` (loaded once)."""
        if task not in self._heads:
            if task not in self.files.heads:
                raise IsoscopeError(f"task {task} has no head file; accuracy views need "
                                    f"head_{task}.safetensors in {self.files.root}")
            self._heads[task] = read_head(self.files.heads[task], self._width, self._trust)
        return self._heads[task]

    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        return self.evaluate_tasks(state_dict, [task], split)[task]

    def evaluate_tasks(self, state_dict: StateDict, tasks: Iterable[str] | None = None,
                       split: str = "test") -> dict[str, float]:
        """Top-1 accuracy per task; the encoder is built once for all tasks."""
        tasks = list(tasks or self.tasks)
        encoder = self._encoder(state_dict, tasks, split)
        return {t: float((self._predict(encoder, t, split) == self.data.load(t, split, self.preprocess).labels)
                         .float().mean()) for t in tasks}

    def predictions(self, state_dict: StateDict, task: str, split: str = "test") -> torch.Tensor:
        """Predicted class (N,) of every image of ``task``'s ``split``, in ImageFolder order."""
        return self._predict(self._encoder(state_dict, [task], split), task, split)

    def _encoder(self, state_dict: StateDict, tasks: list[str], split: str) -> torch.nn.Module:
        gaps = self.missing(split, tasks)
        if gaps:
            raise IsoscopeError("cannot compute accuracy: " + "; ".join(gaps))
        for task in tasks:
            self.head(task)  # head errors before the encoder is built
        return load_encoder(state_dict, self.config, self.device)

    def _predict(self, encoder: torch.nn.Module, task: str, split: str) -> torch.Tensor:
        head, data = self.head(task), self.data.load(task, split, self.preprocess)
        if len(data.classes) != head.weight.shape[0]:
            raise IsoscopeError(f"task {task}: {self.data.root} has {len(data.classes)} class folders but "
                                f"its head has {head.weight.shape[0]} rows")
        features = torch.cat([encode(encoder, batch) for batch in data.batches(self.preprocess)])  # (N, D)
        return head.predict(features).cpu()  # (N,)


class _Overlay(Mapping[str, torch.Tensor]):
    """``view`` plus the ``keys`` it lacks, read from ``base``."""

    def __init__(self, view: MappedCheckpoint, base: MappedCheckpoint, keys: list[str]) -> None:
        self.view, self.base, self.keys_from_base = view, base, list(keys)

    def _owner(self, key: str) -> MappedCheckpoint:
        return self.base if key in self.keys_from_base else self.view

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._owner(key)[key]

    def __iter__(self) -> Iterator[str]:  # θ0's key order
        present = set(self.view) | set(self.keys_from_base)
        return iter([k for k in self.base if k in present] + [k for k in self.view if k not in self.base])

    def __len__(self) -> int:
        return len(self.view) + len(self.keys_from_base)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner(key).shape(key)


def _read_checked(view: Mapping[str, torch.Tensor], source: Path) -> StateDict:
    """Every tensor of ``view``; NonFiniteError naming the key and ``source`` on NaN/Inf."""
    state = {k: view[k] for k in view}
    check_state_finite(state, str(source))
    return state


def _hash_stat(digest: "hashlib._Hash", path: Path, root: Path) -> None:
    stat = path.stat()
    digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())


def _hash_file(digest: "hashlib._Hash", path: Path, root: Path) -> None:
    _hash_stat(digest, path, root if path.is_relative_to(root) else path.parent)
    with open(path, "rb") as handle:
        digest.update(handle.read(HEADER_BYTES))


def _untrusted_message(files: FolderFiles) -> str:
    return (f"{files.root} holds pickled whole models ({files.layout} layout): loading them runs code "
            "stored in the files. Open it only if you trust where the files come from (app: tick "
            "'Trust these files'; command line: --trust-pickle; Python: trust_pickle=True), or convert it once to safetensors "
            f"with: python -m zoo convert --folder '{files.root}' --out <new folder> --trust-pickle "
            f"(Python: zoo.folders.convert_folder('{files.root}', '<out>', trust_pickle=True)) and open "
            "the converted folder from then on.")


def open_folder(path: str | Path, data: str | Path | None = None, trust_pickle: bool = False,
                device: str | torch.device | None = None) -> FolderZoo:
    """The zoo stored in the folder at ``path`` (any layout of ``zoo.layouts.LAYOUTS``)."""
    return FolderZoo(find_layout(allowed_path(path)), data=data, trust_pickle=trust_pickle, device=device)


def open_files(pretrained: str | Path, finetuned: Mapping[str, str | Path],
               heads: Mapping[str, str | Path] | None = None, data: str | Path | None = None,
               trust_pickle: bool = False, device: str | torch.device | None = None,
               act: str = "gelu") -> FolderZoo:
    """A zoo from explicit files: θ0, one checkpoint per task, optional heads per task."""
    if not finetuned:
        raise IsoscopeError("give at least one fine-tuned checkpoint")
    pretrained = allowed_path(pretrained)
    files = FolderFiles("files", pretrained.parent, pretrained, {t: allowed_path(p) for t, p in finetuned.items()},
                        {t: allowed_path(p) for t, p in (heads or {}).items()}, act=act)
    return FolderZoo(files, data=data, trust_pickle=trust_pickle, device=device)


def convert_folder(path: str | Path, out: str | Path, trust_pickle: bool = False,
                   progress: Progress | None = None) -> Path:
    """Write the zoo at ``path`` to ``out`` in the plain layout: safetensors only, open_clip names."""
    zoo, out, progress = open_folder(path, trust_pickle=trust_pickle), Path(out), progress or silent
    files = {"pretrained": (zoo._base, zoo.files.pretrained)} | \
        {t: (zoo._views[t], zoo.files.tasks[t]) for t in zoo.tasks}  # read one at a time, not cached
    steps: list[tuple[str, Callable[[], StateDict]]] = [
        (name, lambda view=view, src=src: _read_checked(view, src)) for name, (view, src) in files.items()]
    steps += [(f"head_{t}", lambda t=t: _head_state(zoo.head(t))) for t in zoo.files.heads]
    for i, (name, load) in enumerate(steps):
        progress(i / len(steps), f"writing {name}.safetensors")
        save_safetensors(load(), out / f"{name}.safetensors", metadata={"source": str(zoo.files.root)})
    options = {"act": zoo.config.act, "heads": zoo.config.heads,
               "mean": list(zoo.preprocess.mean), "std": list(zoo.preprocess.std)}
    write_text_atomic(out / OPTIONS_FILE, json.dumps(options, indent=1))
    progress(1.0, f"converted {len(zoo.tasks)} tasks to {out}")
    return out


def _head_state(head: Head) -> StateDict:
    return {"weight": head.weight} | ({} if head.bias is None else {"bias": head.bias})
