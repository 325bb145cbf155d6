"""Checkpoint folder layouts (docs/design.md, Where models come from, items 2–5): one small reader per layout, in a table.

A reader looks at a folder and either returns ``FolderFiles`` (which file is θ0, which file is
θt for each task, which head file belongs to each task) or None when the folder is not in its
layout. Readers only list files; reading tensors is ``zoo.folders``' job.

- ``tall_masks``: ``<root>/<model>/<Task>Val/nonlinear_finetuned.pt``,
  ``<root>/<model>/MNISTVal/nonlinear_zeroshot.pt``, heads ``<root>/<model>/head_<Task>Val.pt``
  (TALL-masks, Wang et al. 2024, and TSV, Gargiulo et al. 2025, release their fine-tunes so).
  The public release has no zero-shot file (``pretrained`` is then None: ``zoo.folders`` asks
  for one); its Hugging Face copy nests the same tree under ``single_task/<model>/``.
- ``task_vectors``: ``<root>/<model>/<Task>/finetuned.pt``, ``<root>/<model>/zeroshot.pt``,
  ``head_<Task>.pt`` (Ilharco et al. 2023): pickled whole modules, read by the code-free reader.
- ``hf``: Hugging Face ``CLIPVisionModel`` folders (config.json + model.safetensors), one per
  task plus the base, named ``<base>`` and ``<base>_<task>`` (FusionBench, Tang et al. 2024)
  or with the base named ``pretrained``; heads ``head_<task>.*`` next to them.
- ``hf_hub``: the Hugging Face hub cache those models land in after ``from_pretrained``:
  ``<hub>/models--<org>--<name>/snapshots/<rev>/`` (files are symlinks into ``blobs/``), with
  ``refs/main`` naming the revision; named like ``hf`` by ``<name>``.
- ``plain``: ``pretrained.<ext>`` (or zeroshot/base) and ``<task>.<ext>`` in one folder,
  heads ``head_<task>.<ext>``; ext is safetensors, pt, pth or bin.
Models from OpenAI CLIP (the first two layouts) use QuickGELU; a folder may say otherwise in
an optional ``isoscope.json`` (``{"act": "gelu", "heads": 4}``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from merging.errors import CheckpointError
from merging.paths import allowed_path

TORCH_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save files: pickles, whatever they hold
CHECKPOINT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
PRETRAINED_STEMS = ("pretrained", "zeroshot", "zero_shot", "base", "theta0")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPTIONS_FILE = "isoscope.json"
OPTION_TYPES = {"act": str, "heads": int, "mean": list, "std": list, "classes": dict}


@dataclass(frozen=True)
class FolderFiles:
    """Where θ0, each θt and each head live. A task's checkpoint may be a file or an HF folder."""

    layout: str
    root: Path
    pretrained: Path | None  # None: the release has no zero-shot model (zoo.folders finds one)
    tasks: dict[str, Path]
    heads: dict[str, Path] = field(default_factory=dict)
    pickled: bool = False  # whole pickled modules (read by merging.pickle_reader, no code runs)
    act: str = "gelu"  # the layout's default; FolderZoo layers an HF config and isoscope.json over it
    options: dict = field(default_factory=dict)  # from isoscope.json: act, heads, mean, std

    def torch_files(self) -> list[Path]:
        """θ0, θt and head files saved by torch (pickles), which a conversion to safetensors
        would replace; an HF task folder counts as its folder, not its weights file."""
        paths = [self.pretrained, *self.tasks.values(), *self.heads.values()]
        return [p for p in paths if p is not None and p.suffix in TORCH_SUFFIXES]


@dataclass(frozen=True)
class Layout:
    name: str
    pattern: str  # what a person should put in the folder
    read: Callable[[Path], FolderFiles | None]


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)


def _heads(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    """Head file per task: ``head_<name>.<ext>`` in ``folder`` for each task -> name."""
    found = {p.stem[len("head_"):]: p for p in _checkpoints(folder) if p.stem.startswith("head_")}
    return {task: found[name] for task, name in names.items() if name in found}


def _model_dir(path: Path, is_model: Callable[[Path], bool]) -> Path | None:
    """``path`` when it is a model folder, else its only child that is one (``<root>/<model>``,
    also below ``single_task/``, the Hugging Face copy of TALL-masks, and below a hub-cache
    snapshot of such a repository)."""
    path = snapshot_of(path) or path
    if is_model(path):
        return path
    parents = [path] + [path / "single_task"] * (path / "single_task").is_dir()
    models = [d for parent in parents for d in sorted(parent.iterdir()) if d.is_dir() and is_model(d)]
    if len(models) > 1:
        raise CheckpointError(f"{path} holds several models ({', '.join(d.name for d in models)}); "
                              "point at one of those folders")
    return models[0] if models else None


def read_tall_masks(path: Path) -> FolderFiles | None:
    model = _model_dir(path, lambda d: any(d.glob("*/nonlinear_finetuned.pt")))
    if model is None:
        return None
    folders = {d.name: d for d in sorted(model.iterdir()) if (d / "nonlinear_finetuned.pt").is_file()}
    zeroshots = [model / "MNISTVal" / "nonlinear_zeroshot.pt", *sorted(model.glob("*/nonlinear_zeroshot.pt"))]
    pretrained = next((p for p in zeroshots if p.is_file()), None)  # the public release has none
    tasks = {name.removesuffix("Val"): d / "nonlinear_finetuned.pt" for name, d in folders.items()}
    return FolderFiles("tall_masks", model, pretrained, tasks,
                       _heads(model, {name.removesuffix("Val"): name for name in folders}), act="quick_gelu")


def read_task_vectors(path: Path) -> FolderFiles | None:
    model = _model_dir(path, lambda d: (d / "zeroshot.pt").is_file() and any(d.glob("*/finetuned.pt")))
    if model is None:
        return None
    tasks = {d.name: d / "finetuned.pt" for d in sorted(model.iterdir()) if (d / "finetuned.pt").is_file()}
    return FolderFiles("task_vectors", model, model / "zeroshot.pt", tasks,
                       _heads(model, {t: t for t in tasks}), pickled=True, act="quick_gelu")


def hf_weights_file(folder: Path) -> Path | None:
    """The weights file of a Hugging Face model folder (first of HF_WEIGHTS present), or None."""
    return next((folder / w for w in HF_WEIGHTS if (folder / w).is_file()), None)


def _hf_weights(folder: Path) -> Path | None:
    """``hf_weights_file``, for folders that also hold a config.json (layout detection)."""
    return hf_weights_file(folder) if (folder / "config.json").is_file() else None


REVISION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")  # what ``refs/main`` may name (a commit hash, a tag)


def _revision(ref: Path) -> str | None:
    """The revision ``refs/main`` names: read only if the file is allowed (served mode), at most
    256 bytes, and only a plain revision name (never a path: ``..``, ``/`` or NUL are refused)."""
    if not ref.is_file():
        return None
    with open(allowed_path(ref), "rb") as f:
        text = f.read(256).decode("utf-8", "replace").strip()
    return text if REVISION.fullmatch(text) and ".." not in text else None


def snapshot_of(repo: Path) -> Path | None:
    """The snapshot folder of a hub-cache repository ``models--<org>--<name>`` (the revision
    ``refs/main`` names, else the only or newest snapshot), or None when ``repo`` is not one."""
    snapshots = repo / "snapshots"
    if not repo.name.startswith("models--") or not snapshots.is_dir():
        return None
    revision = _revision(repo / "refs" / "main")
    if revision is not None and (snapshots / revision).is_dir():
        return _checked(snapshots / revision)
    revisions = sorted((d for d in snapshots.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    return _checked(revisions[-1]) if revisions else None


def _checked(folder: Path) -> Path:
    """``folder`` as found, after ``allowed_path`` confirmed it lies inside the served roots."""
    allowed_path(folder)
    return folder


def _hf_models(path: Path) -> dict[str, Path]:
    """Hugging Face model folders under ``path``: its subfolders, or the hub-cache repositories
    ``models--<org>--<name>`` (by ``<name>``, at their snapshot)."""
    hub = path / "hub" if (path / "hub").is_dir() else path
    snapshots = {d.name.split("--", 2)[-1]: snapshot_of(d) for d in sorted(hub.iterdir()) if d.is_dir()}
    models = {name: s for name, s in snapshots.items() if s is not None and _hf_weights(s)}
    return models or {d.name: d for d in sorted(path.iterdir()) if d.is_dir() and _hf_weights(d)}


def read_hf(path: Path) -> FolderFiles | None:
    models = _hf_models(path)
    if len(models) < 2:
        return None
    base = next((n for n in PRETRAINED_STEMS if n in models), None) or \
        next((n for n in models if all(o.startswith(n) for o in models)), None)
    if base is None:
        raise CheckpointError(f"{path}: cannot tell which Hugging Face folder is the pretrained model "
                              f"(found {', '.join(models)}); name it 'pretrained', or name the "
                              "fine-tunes <base>_<task> next to <base>")
    prefix = base if all(n.startswith(base) for n in models) else ""
    tasks = {n[len(prefix):].lstrip("_-.") or n: d for n, d in models.items() if n != base}
    layout = "hf" if models[base].parent == path else "hf_hub"
    return FolderFiles(layout, path, models[base], tasks, _heads(path, {t: t for t in tasks}))


def read_plain(path: Path) -> FolderFiles | None:
    files = [p for p in _checkpoints(path) if not p.stem.startswith("head_")]
    pretrained = next((p for stem in PRETRAINED_STEMS for p in files if p.stem == stem), None)
    if pretrained is None or len(files) < 2:
        return None
    tasks = {p.stem: p for p in files if p != pretrained}
    return FolderFiles("plain", path, pretrained, tasks, _heads(path, {t: t for t in tasks}))


LAYOUTS: tuple[Layout, ...] = (
    Layout("tall_masks", "<model>/<Task>Val/nonlinear_finetuned.pt + <model>/MNISTVal/nonlinear_zeroshot.pt "
           "(+ head_<Task>Val.pt)", read_tall_masks),
    Layout("task_vectors", "<model>/<Task>/finetuned.pt + <model>/zeroshot.pt (+ head_<Task>.pt; pickled)",
           read_task_vectors),
    Layout("hf", "one Hugging Face folder (config.json + model.safetensors) per task and one for the base: "
           "<base>/ + <base>_<task>/, or pretrained/ + <task>/ (+ head_<task>.safetensors); or a hub cache "
           "(hub/models--<org>--<name>/snapshots/<rev>/)", read_hf),
    Layout("plain", "pretrained.safetensors (or .pt) + one <task>.safetensors per task "
           "(+ head_<task>.safetensors)", read_plain),
)


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path`` (served mode: the path must be allowed); CheckpointError
    naming the file when it is unreadable, not JSON, or not an object."""
    try:
        value = json.loads(allowed_path(path).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_options(folder: Path) -> dict:
    """The optional ``isoscope.json`` of a folder: {"act", "heads", "mean", "std", "classes"}
    ("classes": task -> class names in the order of that task's head rows)."""
    path = folder / OPTIONS_FILE
    if not path.is_file():
        return {}
    options = read_json_object(path)
    bad = [k for k, v in options.items() if k not in OPTION_TYPES or not isinstance(v, OPTION_TYPES[k])]
    if bad:
        raise CheckpointError(f"{path}: unknown or mistyped entries {bad} "
                              f"(allowed: {', '.join(f'{k}: {t.__name__}' for k, t in OPTION_TYPES.items())})")
    return options


def find_layout(path: str | Path) -> FolderFiles:
    """The files of the folder at ``path``, by the first layout whose reader recognises it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        raise CheckpointError(f"{path} is empty: {_supported()}")
    for layout in LAYOUTS:
        files = layout.read(path)
        if files is not None:
            if not files.tasks:
                raise CheckpointError(f"{path}: {layout.name} layout with no fine-tuned task")
            return dataclasses.replace(files, options=read_options(files.root))
    shown = ", ".join(entries[:10]) + (f", … ({len(entries)} entries)" if len(entries) > 10 else "")
    raise CheckpointError(f"{path} is not in a supported checkpoint layout (found: {shown}). {_supported()}")


def _supported() -> str:
    return "Supported layouts: " + "; ".join(f"{l.name}: {l.pattern}" for l in LAYOUTS)


def detect_layout(path: str | Path) -> str:
    """The name of the layout of the folder at ``path`` (one of ``LAYOUTS``); CheckpointError otherwise."""
    return find_layout(path).layout
