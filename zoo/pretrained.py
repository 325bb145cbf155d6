"""θ0 for releases that ship none (the public TALL-masks/TSV release: its authors' code writes
``MNISTVal/nonlinear_zeroshot.pt`` on first run from OpenAI's CLIP weights).

In order: an explicit file the user names (sidebar field, ``--pretrained``, ``pretrained=``);
else OpenAI's weights for the folder's model (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, …) if
open_clip's own download cache already holds them (the Hugging Face hub cache entry open_clip
fetches them from); never a download. Otherwise ``PretrainedMissingError`` names both options.

Public API: ``openai_cache_file(model) -> Path | None``, ``hub_cache_dirs()``,
``find_pretrained(files, explicit) -> (path, note)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from merging.errors import CheckpointError
from zoo.layouts import FolderFiles, snapshot_of

log = logging.getLogger(__name__)

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class PretrainedMissingError(CheckpointError):
    """The release has no zero-shot model and none was given or found."""


def hub_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME") and str(Path(os.environ["HF_HOME"]) / "hub"),
            str(Path.home() / ".cache" / "huggingface" / "hub")]
    return [Path(d) for d in dict.fromkeys(d for d in dirs if d)]


def _hub_repo(model: str) -> str | None:
    """The hub repository open_clip downloads OpenAI's ``model`` weights from, if it knows one."""
    try:
        from open_clip.pretrained import get_pretrained_cfg
    except ImportError:
        return None
    return (get_pretrained_cfg(model, "openai") or {}).get("hf_hub", "").strip("/") or None


def openai_cache_file(model: str) -> Path | None:
    """OpenAI's ``model`` weights in open_clip's local cache, or None (never downloads)."""
    repo = _hub_repo(model)
    if repo is None:
        return None
    for hub in hub_cache_dirs():
        snapshot = snapshot_of(hub / f"models--{repo.replace('/', '--')}")
        found = next((snapshot / f for f in OPEN_CLIP_FILES if snapshot and (snapshot / f).is_file()), None)
        if found is not None:
            return found
    return None


def find_pretrained(files: FolderFiles, explicit: str | Path | None) -> tuple[Path, str | None]:
    """θ0's file for ``files``, and a note for the user when it did not come from the folder."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PretrainedMissingError(f"pretrained file {path} does not exist")
        return path, f"θ0 (zero-shot model): {path}"
    if files.pretrained is not None:
        return files.pretrained, None
    model = files.root.name
    cached = openai_cache_file(model)
    if cached is not None:
        return cached, f"θ0 (zero-shot model): OpenAI's {model} weights from open_clip's cache, {cached}"
    repo = _hub_repo(model)
    where = (f"python -c \"import open_clip; open_clip.create_model('{model}', pretrained='openai')\" "
             f"stores them in {hub_cache_dirs()[0]}/models--{repo.replace('/', '--')}") if repo else \
        f"open_clip knows no OpenAI weights for a model named '{model}'"
    raise PretrainedMissingError(
        f"{files.root}: this release has no zero-shot model (θ0). Give the pretrained {model} weights as a file "
        f"(app: the sidebar's 'Pretrained model file'; command line: --pretrained FILE; Python: "
        f"open_folder(..., pretrained=FILE) or open_files(FILE, ...)), or put OpenAI's weights in open_clip's "
        f"cache, where they are found automatically ({where})")
