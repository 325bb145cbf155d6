"""Task-vector plumbing, in exactly one place (docs/design.md, Terms).

- ``task_vector``: τt = θt − θ0, per key, in float32.
- ``is_matrix``: which parameters are merged as matrices by the SVD methods: every 2-D
  parameter except ``text_projection`` (matches the official Iso code, so an open_clip visual
  tower's ``positional_embedding`` and ``proj`` count as matrices). Everything else (biases,
  norms, the 4-D patch conv, class embedding) is merged by the mean of the τt.
- ``flatten``: one long vector over all keys, for elementwise methods (TIES's thresholds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from merging.errors import MismatchError, NonFiniteError

StateDict = dict[str, torch.Tensor]

EXCLUDED_MATRICES = ("text_projection",)
COMPUTE_DTYPE = torch.float32


def is_matrix(key: str, tensor: torch.Tensor | torch.Size | Sequence[int]) -> bool:
    """True when ``key`` is merged as a matrix by the spectral methods."""
    shape = tensor.shape if isinstance(tensor, torch.Tensor) else tuple(tensor)
    return len(shape) == 2 and not any(key.endswith(x) for x in EXCLUDED_MATRICES)


def task_vector(pretrained: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
    """τ = θt − θ0, computed in float32 whatever the stored dtype."""
    return finetuned.to(COMPUTE_DTYPE) - pretrained.to(COMPUTE_DTYPE)


def shape_of(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """Shape without reading data when ``state`` is lazy (merging.io.Checkpoint has ``shape``)."""
    return tuple(state.shape(key)) if hasattr(state, "shape") else tuple(state[key].shape)


def _is_float(state: Mapping[str, torch.Tensor], key: str) -> bool:
    dtype = state.dtype(key) if hasattr(state, "dtype") else state[key].dtype
    return dtype.is_floating_point


def check_compatible(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise MismatchError naming the first few missing/unexpected keys, differing shapes, and
    float-vs-integer dtype differences (fp16 against fp32 is fine: merging computes in fp32).
    Lazy checkpoints are checked from their headers, without reading tensors."""
    missing = [k for k in reference if k not in other]
    extra = [k for k in other if k not in reference]
    common = [k for k in reference if k in other]
    shapes = [f"{k} {shape_of(reference, k)} vs {shape_of(other, k)}"
              for k in common if shape_of(reference, k) != shape_of(other, k)]
    kinds = [k for k in common if _is_float(reference, k) != _is_float(other, k)]
    problems = ([f"missing keys: {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected keys: {', '.join(extra[:3])}"] if extra else []) + \
               ([f"shape differs: {'; '.join(shapes[:3])}"] if shapes else []) + \
               ([f"float vs integer dtype: {', '.join(kinds[:3])}"] if kinds else [])
    if problems:
        raise MismatchError(f"{name} does not match the pretrained model ({'; '.join(problems)})")


def flatten(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate every tensor into one float32 vector (key order of ``state``)."""  # (N,)
    return torch.cat([v.reshape(-1).to(COMPUTE_DTYPE) for v in state.values()])


def all_finite(a: torch.Tensor) -> bool:
    """True when ``a`` holds no NaN/Inf. One reduction (NaN/Inf propagate into the sum, 40× faster
    than an elementwise test on a 3072×768 layer); the exact elementwise check runs only when the
    sum is not finite (NaN/Inf, or overflow)."""
    if a.numel() == 0 or bool(torch.isfinite(a.sum())):
        return True
    return bool(torch.isfinite(a).all())


def check_finite(key: str, tensor: torch.Tensor, source: str = "checkpoint") -> None:
    """Raise NonFiniteError naming ``key`` and ``source`` when ``tensor`` holds NaN or Inf."""
    if tensor.is_floating_point() and not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{source}: tensor '{key}' holds {bad} NaN/Inf value(s)")


def check_state_finite(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``check_finite`` on every tensor of ``state``: the first NaN/Inf names its key and ``source``."""
    for key, tensor in state.items():
        check_finite(key, tensor, source)
