"""Checkpoint IO: lazy readers for safetensors and torch state-dict files, and an atomic
safetensors writer. (First version; hardening against hostile input is issue #6.)

Public API (other rooms rely on it):
- ``open_checkpoint(path, trust_pickle=False) -> Checkpoint``: lazy, ``keys()``, ``shape(key)``,
  ``dtype(key)``, ``get(key) -> Tensor`` (float tensors as stored), ``load() -> StateDict``.
- ``load_state_dict(path, trust_pickle=False) -> StateDict``.
- ``save_safetensors(state, path, metadata=None)``: atomic (temp file + rename).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merging.errors import CheckpointError
from merging.tensors import StateDict


class Checkpoint(Mapping[str, torch.Tensor]):
    """A read-only, lazily loaded state dict backed by one file."""

    def __init__(self, path: str | Path, trust_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        self._tensors: StateDict | None = None
        self._st = None
        if self.path.suffix == ".safetensors":
            try:
                self._st = safe_open(str(self.path), framework="pt")
            except Exception as err:  # noqa: BLE001 - the library raises many types
                raise CheckpointError(f"{self.path}: not a readable safetensors file ({err})") from err
            self._keys = list(self._st.keys())
        else:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{self.path}: not a readable torch state dict ({err})") from err
            if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise CheckpointError(f"{self.path}: does not hold a state dict of tensors")
            self._tensors = dict(obj)
            self._keys = list(obj)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        if key not in self._keys:
            raise KeyError(key)
        return self._st.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._st.get_slice(key).get_shape())

    def load(self) -> StateDict:
        return {k: self[k] for k in self._keys}


def open_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    return Checkpoint(path, trust_pickle=trust_pickle)


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> StateDict:
    return open_checkpoint(path, trust_pickle).load()


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
