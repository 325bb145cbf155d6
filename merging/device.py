"""Device choice, in one place: CUDA when present, else CPU; overridable by argument or by
the ``ISOSCOPE_DEVICE`` environment variable."""

from __future__ import annotations

import torch

from merging import settings
from merging.errors import IsoscopeError

DEVICE_ENV = settings.SETTINGS["device"].env


def available_devices() -> list[str]:
    """Names a user may pick, best first."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def pick_device(override: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on: ``override``, else $ISOSCOPE_DEVICE, else CUDA if present."""
    name = str(override) if override else settings.value("device")
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IsoscopeError(f"device '{name}' was requested but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise IsoscopeError(f"unknown device '{name}' (use cpu or cuda)") from err
