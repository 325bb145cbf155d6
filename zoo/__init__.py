"""Where models and tasks come from: the embedded digits zoo, real checkpoint folders,
datasets, frozen classification heads and ``evaluate()``. Imports ``merging``, never streamlit.

``load_zoo(spec)`` dispatches through ``LOADERS`` (a table: name -> loader). A spec that names
no entry goes to the ``PATH_SOURCE`` entry when one is registered (checkpoint folders)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from merging.errors import IsoscopeError
from merging.progress import Progress
from zoo.base import Zoo

Loader = Callable[..., Zoo]  # loader(spec, *, data, trust_pickle, device, progress) -> Zoo
PATH_SOURCE = "path"


def _digits(spec: str, *, max_images: int | None = None, **kwargs: object) -> Zoo:
    from zoo.digits import load_digits_zoo

    if max_images is not None:
        raise IsoscopeError("an evaluation budget (max_images) applies to the data of a checkpoint folder; the "
                            f"embedded {spec} zoo is scored on all its images (they take seconds)")
    return load_digits_zoo(spec, **kwargs)


def _folder(spec: str, *, progress: Progress | None = None, **kwargs: object) -> Zoo:
    from zoo.folders import open_folder

    if not Path(spec).is_dir():
        raise IsoscopeError(f"{spec!r} is neither a zoo name (digits, digits-tiny) nor a checkpoint folder")
    return open_folder(spec, **kwargs)


LOADERS: dict[str, Loader] = {"digits": _digits, "digits-tiny": _digits, PATH_SOURCE: _folder}


def load_zoo(spec: str = "digits", *, data: str | Path | None = None, trust_pickle: bool = False,
             device: str | torch.device | None = None, progress: Progress | None = None,
             **options: object) -> Zoo:
    """The zoo named by ``spec``: "digits" (default), "digits-tiny", or a registered source;
    ``options`` go to the source's loader (folders: ``pretrained=`` θ0's file)."""
    loader = LOADERS.get(spec) or LOADERS.get(PATH_SOURCE)
    if loader is None:
        raise IsoscopeError(f"unknown zoo {spec!r}; choose one of: {', '.join(LOADERS)}")
    return loader(spec, data=data, trust_pickle=trust_pickle, device=device, progress=progress, **options)
