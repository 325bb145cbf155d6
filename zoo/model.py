"""The image encoder every zoo scores: an open_clip ``VisionTransformer`` (CLIP's visual tower,
Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
§2.4), with parameter names exactly as in CLIP, and zero-shot-style scoring against frozen
class embeddings (CLIP Eq. in Fig. 3: logits = normalise(f(x)) · normalise(w_c)).

Public API:
- ``VitConfig``: the shape of a visual tower.
- ``infer_vit_config(state, heads=None)``: the config from a state dict's key shapes.
- ``build_encoder(config)`` / ``load_encoder(state, config=None, device=None)``.
- ``encode(encoder, images, batch_size)``: L2-normalised features (N, D).
- ``accuracy(features, head, labels)``: top-1 with a frozen head (C, D).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from merging.device import pick_device
from merging.errors import CheckpointError

log = logging.getLogger(__name__)

STEM_KEY = "conv1.weight"
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"gelu": torch.nn.GELU, "quick_gelu": QuickGELU}


@dataclass(frozen=True)
class VitConfig:
    """Hyper-parameters of an open_clip visual tower (the ones key shapes determine, plus heads)."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    act: str = "gelu"  # key of ACTIVATIONS; OpenAI CLIP weights use "quick_gelu"

    def as_dict(self) -> dict:
        return asdict(self)


def state_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """The prefix in front of the visual-tower keys ('' or e.g. 'model.visual.')."""
    for key in state:
        if key.endswith(STEM_KEY):
            return key[: -len(STEM_KEY)]
    raise CheckpointError(f"not an open_clip visual tower: no key ending in '{STEM_KEY}'")


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual-tower tensors with their keys as a bare ``VisionTransformer`` names them."""
    prefix = state_prefix(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def infer_vit_config(state: Mapping[str, torch.Tensor], heads: int | None = None) -> VitConfig:
    """Read a ``VitConfig`` off the key shapes (heads: ``width // 64``, at least 1, unless given)."""
    s = strip_prefix(state)
    try:
        width, _, patch, _ = s[STEM_KEY].shape  # (width, 3, p, p)
        tokens = s["positional_embedding"].shape[0]  # (1 + (image/p)², width)
        output_dim = s["proj"].shape[1] if "proj" in s else width  # (width, D)
        hidden = s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]  # (width·ratio, width)
    except KeyError as err:
        raise CheckpointError(f"not an open_clip visual tower: missing {err}") from None
    grid = round((tokens - 1) ** 0.5)
    if grid * grid != tokens - 1:
        raise CheckpointError(f"positional_embedding has {tokens} rows, not 1 + a square grid")
    layers = 1 + max(int(m.group(1)) for k in s if (m := _BLOCK.match(k)))
    ls = 1.0 if "transformer.resblocks.0.ls_1.gamma" in s else None
    return VitConfig(image_size=grid * patch, patch_size=patch, width=width, layers=layers,
                     heads=heads or max(1, width // 64), output_dim=output_dim,
                     mlp_ratio=hidden / width, ls_init_value=ls)


def build_encoder(config: VitConfig) -> VisionTransformer:
    """A freshly initialised ``VisionTransformer`` of this shape (CPU, train mode)."""
    return VisionTransformer(image_size=config.image_size, patch_size=config.patch_size,
                             width=config.width, layers=config.layers, heads=config.heads,
                             mlp_ratio=config.mlp_ratio, ls_init_value=config.ls_init_value,
                             output_dim=config.output_dim, act_layer=_activation(config.act))


def _activation(name: str) -> type[torch.nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise CheckpointError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None


def load_encoder(state: Mapping[str, torch.Tensor], config: VitConfig | None = None,
                 device: str | torch.device | None = None) -> VisionTransformer:
    """An encoder holding ``state`` (float32, eval mode) on ``device`` (default: pick_device)."""
    config = config or infer_vit_config(state)
    encoder = build_encoder(config)
    weights = {k: v.float() for k, v in strip_prefix(state).items()}
    if "proj" not in weights:  # towers saved without a projection (HF CLIPVisionModel) output width
        encoder.proj = None
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"state dict does not fit the encoder (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return encoder.to(pick_device(device)).eval()


@torch.no_grad()
def encode(encoder: VisionTransformer, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised features (N, D) of preprocessed ``images`` (N, 3, H, W), on the encoder's device."""
    device = next(encoder.parameters()).device
    parts = [encoder(images[i:i + batch_size].to(device, non_blocking=True))  # (b, D)
             for i in range(0, images.shape[0], batch_size)]
    return torch.nn.functional.normalize(torch.cat(parts), dim=-1)  # (N, D)


def logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Cosine logits (N, C) of features (N, D) against class embeddings ``head`` (C, D)."""
    return features @ torch.nn.functional.normalize(head.to(features), dim=-1).T


def accuracy(features: torch.Tensor, head: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (0..1) of features (N, D) with frozen head (C, D) against ``labels`` (N,)."""
    predicted = logits(features, head).argmax(dim=-1)  # (N,)
    return float((predicted.cpu() == labels.cpu()).float().mean())
