"""Real checkpoint folders as a zoo (docs/design.md, Where models come from, items 2–5).

``open_folder(path)`` detects the layout (``zoo.layouts``), opens every checkpoint lazily
through ``merging.io`` and presents each one under open_clip ``VisionTransformer`` key names:
a *plan* per file maps each open_clip key to the stored key(s) it comes from (a prefix strip
for ``model.visual.*`` files, the Hugging Face renaming of ``zoo.hf`` otherwise), so everything
downstream sees one naming whatever the layout. Keys and shapes of every task are checked
against θ0 on open from file headers alone; NaN/Inf when a state dict is first loaded.

Scoring follows the task_vectors ``ClassificationHead`` (Ilharco et al. 2023): logits = W·f̂ + b
with f̂ the L2-normalised image feature and (W, b) the stored head (C, D), (C,). Rows follow the
class order of the head's authors when the data says it (``classnames.txt`` in a task's data
folder, or ``"classes": {task: [...]}`` in ``isoscope.json``); labels of the sorted class folders
are mapped onto it. A task without a head file gets CLIP's zero-shot head built from θ0's text
tower when θ0 has one (``zoo.text_heads``), cached on disk.

θ0 comes from the folder, or (a release without one) from ``zoo.pretrained.find_pretrained``.
Pickled whole modules open without trust: ``merging.io`` reads them without running code.

Public API:
- ``detect_layout(path) -> str``; ``open_folder(path, data=None, trust_pickle=False, device=None,
  pretrained=None)``; ``open_files(pretrained, finetuned, heads=None, ...)`` for explicit file lists.
- ``FolderZoo``: the ``Zoo`` over a folder (``tasks``, ``pretrained()``, ``finetuned(t)``,
  ``fingerprint``, ``has_data``, ``missing()``, ``evaluate``, ``evaluate_tasks``, ``notes``,
  ``head_origin``, ``class_names(t)``).
- ``convert_folder(path, out, trust_pickle=False, pretrained=None)``: write any layout once as
  safetensors in the ``plain`` layout, atomically (a temporary folder renamed at the end).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.device import pick_device
from merging.errors import CheckpointError, IsoscopeError
from merging.io import (Checkpoint, load_state_dict, open_checkpoint, prefetch_checkpoints, process_umask,
                        save_safetensors, write_text_atomic)
from merging.once import OnceCache
from merging.paths import allowed_path, cache_root
from merging.progress import Progress, silent
from merging.tensors import StateDict, check_compatible, check_finite, check_state_finite
from zoo.base import SPLITS, Zoo
from zoo.data import CLASSNAMES_FILE, Preprocess
from zoo.data_sources import open_data
from zoo.hf import Plan, apply_recipe, hf_plan, is_hf_state, open_clip_rank, read_hf_config, recipe_shape
from zoo.layouts import HF_WEIGHTS, OPTIONS_FILE, FolderFiles, detect_layout, find_layout, hf_weights_file
from zoo.model import encode, infer_vit_config, load_encoder, state_prefix
from zoo.pretrained import find_pretrained
from zoo.text_heads import templates_for, text_plan, zero_shot_head

log = logging.getLogger(__name__)

__all__ = ["FolderZoo", "Head", "convert_folder", "detect_layout", "open_files", "open_folder"]

HEADER_BYTES = 4096  # bytes of each file hashed into the fingerprint (safetensors header, pickle opening)
INHERITED = ("proj",)  # keys a fine-tune may omit and take from θ0 (HF vision-only saves)
HF_LAYOUTS = ("hf", "hf_hub")


class MappedCheckpoint(Mapping[str, torch.Tensor]):
    """A lazy, read-only view of one checkpoint under open_clip visual-tower names."""

    def __init__(self, source: Checkpoint, plan: Plan) -> None:
        self.source, self.plan = source, plan

    def __getitem__(self, key: str) -> torch.Tensor:
        return apply_recipe(self.plan[key], self.source.__getitem__)

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the tensor
        return key in self.plan

    def __len__(self) -> int:
        return len(self.plan)

    def shape(self, key: str) -> tuple[int, ...]:
        return recipe_shape(self.plan[key], self.source.shape)

    def dtype(self, key: str) -> torch.dtype:
        """Stored dtype of ``key`` (its first source tensor's), without reading data."""
        return self.source.dtype(self.plan[key][1][0])


def visual_plan(source: Mapping[str, torch.Tensor]) -> Plan:
    """open_clip key -> recipe for a checkpoint holding an open_clip or Hugging Face visual tower."""
    if is_hf_state(source):
        plan = hf_plan(source)
    else:
        prefix = state_prefix(source)
        plan = {k[len(prefix):]: ("copy", (k,)) for k in source if k.startswith(prefix)}
    return dict(sorted(plan.items(), key=lambda item: open_clip_rank(item[0])))  # safetensors sorts by name


def _weights(path: Path) -> Path:
    """The checkpoint file of ``path``: itself, or a Hugging Face folder's weights file."""
    if path.is_dir():
        return hf_weights_file(path) or path / HF_WEIGHTS[0]  # a missing file gets open_checkpoint's message
    return path


def open_visual(path: Path, trust_pickle: bool = False) -> MappedCheckpoint:
    """The visual tower stored at ``path`` (a checkpoint file or a Hugging Face folder), lazily."""
    source = open_checkpoint(_weights(path), trust_pickle=trust_pickle)
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
                 device: str | torch.device | None = None, pretrained: str | Path | None = None,
                 max_images: int | None = None) -> None:
        if max_images is not None and max_images < 1:
            raise IsoscopeError(f"max_images must be at least 1 (got {max_images}); leave it out to score every image")
        path, note = find_pretrained(files, pretrained)
        files = dataclasses.replace(files, pretrained=allowed_path(path))
        self._notes: list[str] = [note] if note else []  # what the user should know (``notes``)
        self._notes_lock = threading.Lock()
        self.head_origin: dict[str, str] = {}  # task -> "file" | "text tower" (written once, in the head's build)
        self.files, self.name, self.tasks = files, files.root.name, list(files.tasks)
        self._trust, self._device = trust_pickle, device
        for path in self._files():  # served mode: no symlink inside the folder may lead outside
            allowed_path(path)
        prefetch_checkpoints(_weights(p) for p in [files.pretrained, *files.tasks.values()])  # parsed in parallel
        self._base = open_visual(files.pretrained, trust_pickle)
        self._views = {t: self._task_view(t) for t in self.tasks}
        settings = self._settings()
        config = infer_vit_config(_meta(self._base), heads=settings.get("heads"))
        self.config = dataclasses.replace(config, act=settings["act"])
        self.preprocess = Preprocess(self.config.image_size, **{k: tuple(settings[k]) for k in ("mean", "std")
                                                                if settings.get(k)})
        self.data = open_data(data) if data is not None else None
        self.max_images = max_images  # the quick mode's budget per task and split (None: every image)
        self._heads: OnceCache[str, Head] = OnceCache()  # every session shares this zoo: each head built once
        self._text_plan: dict | None = text_plan(self._base.source)  # θ0's text tower (None: vision-only θ0)
        self._fingerprint = self._digest()  # computed here: nothing else is filled lazily but heads and notes

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
        hf = dataclasses.asdict(read_hf_config(self.files.pretrained)) if self.files.layout in HF_LAYOUTS else {}
        return {"act": self.files.act} | {k: v for k, v in hf.items() if v} | self.files.options

    @property
    def device(self) -> torch.device:
        return pick_device(self._device)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _digest(self) -> str:
        digest = hashlib.sha256(json.dumps([self.files.layout, self.config.as_dict(),
                                            dataclasses.astuple(self.preprocess)]).encode())
        for path in self._files():
            _hash_file(digest, path, self.files.root)
        if self.data is not None:
            for task in self.tasks:
                for path in self.data.stamp(task):
                    _hash_stat(digest, path, self.data.root)
        return digest.hexdigest()[:16]

    def _files(self) -> list[Path]:
        paths = [self.files.pretrained, *self.files.tasks.values(), *self.files.heads.values(),
                 self.files.root / OPTIONS_FILE]
        return [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p]) if f.is_file()]

    def pretrained(self) -> Mapping[str, torch.Tensor]:
        """θ0 as a lazy, read-only mapping: each tensor is read from the file when asked for
        (and checked for NaN/Inf then), so opening a zoo holds no weights in memory."""
        return _Checked(self._base, self.files.pretrained)

    def finetuned(self, task: str) -> Mapping[str, torch.Tensor]:
        """θt as a lazy, read-only mapping (see ``pretrained``)."""
        if task not in self._views:
            raise IsoscopeError(f"unknown task {task!r}; tasks: {', '.join(self.tasks)}")
        return _Checked(self._views[task], self.files.tasks[task])

    def missing(self, split: str | None = None, tasks: Iterable[str] | None = None) -> list[str]:
        """What evaluating ``tasks`` on ``split`` (default: all, both splits) still needs, one line per
        gap; empty when every accuracy view works."""
        tasks = list(tasks or self.tasks)
        if self.data is None:
            return ["no evaluation data folder was given (expected <data>/<Task>/val|test/<class>/<image>)"]
        gaps = [f"no head file for task {t} (head_{t}.safetensors with weight (classes, "
                f"{self._width}) in {self.files.root}) and no text tower in θ0 to build one"
                for t in tasks if t not in self.files.heads and self._text_plan is None]
        for s in ([split] if split else SPLITS):
            absent = self.data.missing(tasks, s)
            gaps += [f"no {s} data for {', '.join(absent)} in {self.data.root} ({self.data.layout}: expected "
                     f"{'; '.join(self.data.expected(t) for t in absent[:3])})"] if absent else []
        return gaps

    @property
    def has_data(self) -> bool:
        return not self.missing()

    def sample_size(self, task: str, split: str) -> int | None:
        """How many images ``task``'s accuracy on ``split`` is measured on when that is a sample (the
        quick mode's budget is below the split's size); None for the full split."""
        if self.max_images is None or self.data is None or split not in self.data.splits(task):
            return None
        return self.max_images if self.max_images < self.data.size(task, split) else None

    @property
    def _width(self) -> int:
        return self.config.output_dim

    def head(self, task: str) -> Head:
        """The frozen head of ``task`` (loaded once): its file, else CLIP's zero-shot head from θ0's
        text tower."""
        return self._heads.get(task, lambda: self._build_head(task))

    def _build_head(self, task: str) -> Head:
        if task in self.files.heads:
            head, origin = read_head(self.files.heads[task], self._width, self._trust), "file"
        elif self._text_plan is not None:
            head, origin = Head(self._text_head(task)), "text tower"
        else:
            raise IsoscopeError(f"task {task} has no head file and θ0 has no text tower to build one; "
                                f"accuracy views need head_{task}.safetensors in {self.files.root}")
        self.head_origin[task] = origin
        return head

    @property
    def notes(self) -> list[str]:
        """What the user should know about this zoo (shown by the app), as it stands now: a copy, so
        a reader never sees the list change under it, nor changes the zoo's."""
        with self._notes_lock:
            return list(self._notes)

    def _note(self, message: str) -> None:
        """Add ``message`` to ``notes`` once (sessions share the zoo: the check and the append are one step)."""
        with self._notes_lock:
            if message in self._notes:
                return
            self._notes.append(message)
        log.warning(message)

    def _text_head(self, task: str) -> torch.Tensor:
        """CLIP's zero-shot head (C, D) for ``task``, from the disk cache when built before."""
        classes = [c.replace("_", " ") for c in self._classes_for_text(task)]
        templates = templates_for(task)
        digest = hashlib.sha256(json.dumps([classes, templates, self.config.act]).encode())
        _hash_file(digest, self._base.source.path, self._base.source.path.parent)
        cached = cache_root() / "zeroshot-heads" / f"{digest.hexdigest()[:24]}.safetensors"
        if cached.is_file():
            return load_state_dict(cached)["weight"]
        weight = zero_shot_head(self._base.source.__getitem__, self._text_plan, classes, templates, self.config.act)
        if weight.shape[1] != self._width:
            raise CheckpointError(f"{self._base.source.path}: the text tower gives {weight.shape[1]}-dimensional "
                                  f"embeddings, the image tower {self._width}")
        save_safetensors({"weight": weight}, cached, metadata={"task": task, "source": str(self._base.source.path)})
        return weight

    def _classes_for_text(self, task: str) -> list[str]:
        names = self.class_names(task)
        if names is None and self.data is not None:
            names = self.data.classes(task)
        if not names:
            raise IsoscopeError(f"task {task}: no class names to build a zero-shot head from (give a data folder, "
                                f"or {CLASSNAMES_FILE} in <data>/{task}/, or \"classes\" in {OPTIONS_FILE})")
        return names

    def class_names(self, task: str) -> list[str] | None:
        """The class order of ``task``'s head: ``isoscope.json`` "classes", else what the data says
        (ImageFolder: ``<data>/<Task>/classnames.txt``; the authors' class names; a ClassLabel's
        names); None when none says (sorted folder names apply)."""
        listed = self.files.options.get("classes", {}).get(task)
        if isinstance(listed, list) and all(isinstance(c, str) for c in listed):
            return listed
        return self.data.head_classes(task) if self.data is not None else None

    def _labels(self, task: str, split: str) -> tuple[torch.Tensor, int]:
        """Labels (N,) of ``task``'s ``split`` in the head's class order, and that order's class count."""
        data = self.data.load(task, split, self.preprocess, self.max_images)
        names = self.class_names(task)
        if names is None:
            return data.labels, len(data.classes)
        index = {_norm(n): i for i, n in enumerate(names)}
        order = [index.get(_norm(f)) for f in data.classes]
        if None in order:
            unmatched = [f for f, i in zip(data.classes, order) if i is None]
            message = (f"task {task}: class folders {', '.join(unmatched[:3])} are not among its {len(names)} class "
                       f"names; scoring with the sorted folder order instead")
            self._note(message)
            return data.labels, len(data.classes)
        return torch.tensor(order)[data.labels], len(names)

    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        return self.evaluate_tasks(state_dict, [task], split)[task]

    def evaluate_tasks(self, state_dict: StateDict, tasks: Iterable[str] | None = None,
                       split: str = "test") -> dict[str, float]:
        """Top-1 accuracy per task; the encoder is built once for all tasks."""
        tasks = list(tasks or self.tasks)
        encoder = self._encoder(state_dict, tasks, split)
        return {t: float((self._predict(encoder, t, split) == self._labels(t, split)[0]).float().mean()) for t in tasks}

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
        head, data = self.head(task), self.data.load(task, split, self.preprocess, self.max_images)
        classes = self._labels(task, split)[1]
        if classes != head.weight.shape[0]:
            raise IsoscopeError(f"task {task}: {self.data.root} has {classes} classes but "
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

    def __contains__(self, key: object) -> bool:
        return key in self.keys_from_base or key in self.view

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner(key).shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._owner(key).dtype(key)


class _Checked(Mapping[str, torch.Tensor]):
    """A lazy view whose tensors are checked for NaN/Inf as they are read (NonFiniteError names
    the key and the file)."""

    def __init__(self, view: MappedCheckpoint | _Overlay, source: Path) -> None:
        self.view, self.source = view, source

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self.view[key]
        check_finite(key, tensor, str(self.source))
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.view)

    def __len__(self) -> int:
        return len(self.view)

    def __contains__(self, key: object) -> bool:
        return key in self.view

    def shape(self, key: str) -> tuple[int, ...]:
        return self.view.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.view.dtype(key)


def _hash_stat(digest: "hashlib._Hash", path: Path, root: Path) -> None:
    stat = path.stat()
    digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())


def _hash_file(digest: "hashlib._Hash", path: Path, root: Path) -> None:
    _hash_stat(digest, path, root if path.is_relative_to(root) else path.parent)
    with open(path, "rb") as handle:
        digest.update(handle.read(HEADER_BYTES))


def _norm(name: str) -> str:
    """A class name compared loosely: case, spaces, underscores and hyphens do not matter."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def open_folder(path: str | Path, data: str | Path | None = None, trust_pickle: bool = False,
                device: str | torch.device | None = None, pretrained: str | Path | None = None,
                max_images: int | None = None) -> FolderZoo:
    """The zoo stored in the folder at ``path`` (any layout of ``zoo.layouts.LAYOUTS``); ``pretrained``
    names θ0's file when the folder has none (or replaces the folder's); ``max_images`` scores a
    stratified sample of at most that many images per task and split (``zoo.data``)."""
    return FolderZoo(find_layout(allowed_path(path)), data=data, trust_pickle=trust_pickle, device=device,
                     pretrained=pretrained, max_images=max_images)


def open_files(pretrained: str | Path, finetuned: Mapping[str, str | Path],
               heads: Mapping[str, str | Path] | None = None, data: str | Path | None = None,
               trust_pickle: bool = False, device: str | torch.device | None = None,
               act: str = "gelu", max_images: int | None = None) -> FolderZoo:
    """A zoo from explicit files: θ0, one checkpoint per task, optional heads per task."""
    if not finetuned:
        raise IsoscopeError("give at least one fine-tuned checkpoint")
    pretrained = allowed_path(pretrained)
    files = FolderFiles("files", pretrained.parent, pretrained, {t: allowed_path(p) for t, p in finetuned.items()},
                        {t: allowed_path(p) for t, p in (heads or {}).items()}, act=act)
    return FolderZoo(files, data=data, trust_pickle=trust_pickle, device=device, max_images=max_images)


def convert_folder(path: str | Path, out: str | Path, trust_pickle: bool = False,
                   progress: Progress | None = None, pretrained: str | Path | None = None) -> Path:
    """Write the zoo at ``path`` to ``out`` in the plain layout: safetensors only, open_clip names,
    and an ``isoscope.json`` (activation, heads, preprocessing, class order). Everything goes to a
    temporary folder next to ``out`` that is renamed to ``out`` at the end: a failure leaves
    nothing behind, and ``out`` never exists half-written."""
    zoo, out, progress = open_folder(path, trust_pickle=trust_pickle, pretrained=pretrained), Path(out), progress or silent
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists: choose a new folder, or remove it first")
    files = {"pretrained": zoo.pretrained()} | {t: zoo.finetuned(t) for t in zoo.tasks}  # lazy: one at a time
    steps: list[tuple[str, Callable[[], StateDict]]] = [
        (name, lambda view=view: dict(view.items())) for name, view in files.items()]
    steps += [(f"head_{t}", lambda t=t: _head_state(zoo.head(t))) for t in zoo.files.heads]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for i, (name, load) in enumerate(steps):
            progress(i / len(steps), f"writing {name}.safetensors")
            save_safetensors(load(), tmp / f"{name}.safetensors", metadata={"source": str(zoo.files.root)})
        options = {"act": zoo.config.act, "heads": zoo.config.heads,
                   "mean": list(zoo.preprocess.mean), "std": list(zoo.preprocess.std)}
        options |= {"classes": zoo.files.options["classes"]} if "classes" in zoo.files.options else {}
        write_text_atomic(tmp / OPTIONS_FILE, json.dumps(options, indent=1))
        os.chmod(tmp, 0o777 & ~process_umask())  # mkdtemp made it 0700
        os.rename(tmp, out)  # atomic; onto an empty folder too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(1.0, f"converted {len(zoo.tasks)} tasks to {out}")
    return out


def _head_state(head: Head) -> StateDict:
    return {"weight": head.weight} | ({} if head.bias is None else {"bias": head.bias})
