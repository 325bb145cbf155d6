"""Hugging Face ``CLIPVisionModel`` weights ↔ open_clip ``VisionTransformer`` key names.

Both implement CLIP's visual tower (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", §2.4: a ViT with an extra layer norm before the
transformer), so the mapping is a renaming, except for attention: Hugging Face stores separate
q/k/v projections, open_clip (``nn.MultiheadAttention``) one stacked ``in_proj`` = [q; k; v],
and ``visual_projection.weight`` (P, D) is the transpose of open_clip's ``proj`` (D, P).

A mapping is a *plan*: for every open_clip key, an operation and the source keys it reads.
Plans need only key names, so a lazy checkpoint can be renamed without loading tensors.

Public API:
- ``is_hf_state(keys)``: whether these keys are Hugging Face CLIP vision names.
- ``hf_plan(keys) -> Plan``; ``hf_text_plan(keys) -> Plan | None`` (a CLIPModel's text tower
  under open_clip names); ``apply_recipe(recipe, get)``; ``recipe_shape(recipe, shape)``;
  ``open_clip_rank(key)``: sort key for open_clip's own key order.
- ``hf_to_open_clip(state)`` / ``open_clip_to_hf(state)``: eager conversions.
- ``read_hf_config(folder) -> HfVision``: activation, heads and preprocessing of a folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.errors import CheckpointError
from merging.tensors import StateDict
from zoo.layouts import read_json_object

log = logging.getLogger(__name__)

STEM = "embeddings.patch_embedding.weight"
PROJECTION = "visual_projection.weight"
IGNORED = ("embeddings.position_ids",)  # an integer buffer some versions save

Recipe = tuple[str, tuple[str, ...]]  # (operation, source keys)
Plan = dict[str, Recipe]  # open_clip key -> recipe

OPS: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {
    "copy": lambda ts: ts[0],
    "cat": lambda ts: torch.cat(ts, dim=0),  # q, k, v (D, D) each -> in_proj (3D, D)
    "t": lambda ts: ts[0].T.contiguous(),  # (P, D) -> (D, P)
}
SHAPES: dict[str, Callable[[list[tuple[int, ...]]], tuple[int, ...]]] = {
    "copy": lambda ss: ss[0],
    "cat": lambda ss: (sum(s[0] for s in ss),) + tuple(ss[0][1:]),
    "t": lambda ss: tuple(reversed(ss[0])),
}

# Hugging Face name (below the vision prefix) -> open_clip name; {n} is the block index.
_RENAMES = {
    "embeddings.class_embedding": "class_embedding",
    STEM: "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_BLOCK_RENAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OC_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$")
_QKV = ("q_proj", "k_proj", "v_proj")


def _vision_prefix(keys: Iterable[str]) -> str | None:
    """The prefix before the vision-tower names ('vision_model.' usually), or None."""
    return next((k[: -len(STEM)] for k in keys if k.endswith(STEM)), None)


def is_hf_state(keys: Iterable[str]) -> bool:
    """True when ``keys`` name a Hugging Face CLIP vision tower."""
    return _vision_prefix(keys) is not None


def hf_plan(keys: Iterable[str]) -> Plan:
    """The open_clip plan for a Hugging Face state dict's ``keys`` (text-tower keys are dropped)."""
    keys = list(keys)
    prefix = _vision_prefix(keys)
    if prefix is None:
        raise CheckpointError(f"not a Hugging Face CLIP vision model: no key ending in '{STEM}'")
    plan: Plan = {}
    unmapped = []
    for key in keys:
        if not key.startswith(prefix) or key[len(prefix):] in IGNORED:
            continue
        name = key[len(prefix):]
        entry = _rename(name, prefix)
        if entry is None:
            unmapped.append(key)
        elif entry[0] not in plan:
            plan[entry[0]] = entry[1]
    if unmapped:
        raise CheckpointError(f"Hugging Face keys with no open_clip counterpart: {', '.join(unmapped[:3])}")
    present = set(keys)
    absent = sorted({s for _, sources in plan.values() for s in sources if s not in present})
    if absent:
        raise CheckpointError(f"incomplete Hugging Face checkpoint: missing {', '.join(absent[:3])}")
    outer = prefix[: -len("vision_model.")] if prefix.endswith("vision_model.") else prefix
    if outer + PROJECTION in keys:
        plan["proj"] = ("t", (outer + PROJECTION,))
    return plan


_TOP_ORDER = ("class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias")
_BLOCK_ORDER = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias")


def open_clip_rank(key: str) -> tuple[int, int, int, str]:
    """Sort key putting open_clip names in the order a ``VisionTransformer``'s state dict has
    (unknown names last, by name), whatever order a file stored them in."""
    if key in _TOP_ORDER:
        return (0, 0, _TOP_ORDER.index(key), "")
    match = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
    if match:
        rest = match.group(2)
        return (1, int(match.group(1)), _BLOCK_ORDER.index(rest) if rest in _BLOCK_ORDER else len(_BLOCK_ORDER), rest)
    if key.startswith("ln_post."):
        return (2, 0, int(key.endswith("bias")), "")
    return (3, 0, 0, key)


def _rename(name: str, prefix: str, renames: Mapping[str, str] = _RENAMES) -> tuple[str, Recipe] | None:
    """(open_clip key, recipe) for one Hugging Face name below ``prefix``."""
    if name in renames:
        return renames[name], ("copy", (prefix + name,))
    match = _HF_BLOCK.match(name)
    if not match:
        return None
    block, module, kind = match.groups()
    head = f"transformer.resblocks.{block}."
    if module in (f"self_attn.{p}" for p in _QKV):
        sources = tuple(f"{prefix}encoder.layers.{block}.self_attn.{p}.{kind}" for p in _QKV)
        return f"{head}attn.in_proj_{kind}", ("cat", sources)
    if module in _BLOCK_RENAMES:
        return f"{head}{_BLOCK_RENAMES[module]}.{kind}", ("copy", (prefix + name,))
    return None


# Hugging Face CLIPTextTransformer name (below "text_model.") -> open_clip text-tower name.
_TEXT_RENAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
TEXT_PREFIX = "text_model."
TEXT_PROJECTION = "text_projection.weight"  # (P, D) in HF; open_clip's text_projection is (D, P)
IGNORED_TEXT = ("embeddings.position_ids",)


def hf_text_plan(keys: Iterable[str]) -> Plan | None:
    """The open_clip text-tower plan (``token_embedding.weight``, ``positional_embedding``,
    ``transformer.resblocks.*``, ``ln_final.*``, ``text_projection``) of a Hugging Face
    ``CLIPModel`` state dict, or None when ``keys`` hold no complete text tower."""
    keys = set(keys)
    if TEXT_PREFIX + "embeddings.token_embedding.weight" not in keys or TEXT_PROJECTION not in keys:
        return None
    plan: Plan = {"text_projection": ("t", (TEXT_PROJECTION,))}
    for key in sorted(keys):
        name = key[len(TEXT_PREFIX):]
        if not key.startswith(TEXT_PREFIX) or name in IGNORED_TEXT:
            continue
        entry = _rename(name, TEXT_PREFIX, _TEXT_RENAMES)
        if entry is None:
            raise CheckpointError(f"Hugging Face text key with no open_clip counterpart: {key}")
        plan.setdefault(entry[0], entry[1])
    absent = sorted({s for _, sources in plan.values() for s in sources if s not in keys})
    if absent:
        raise CheckpointError(f"incomplete Hugging Face text tower: missing {', '.join(absent[:3])}")
    return plan if {"positional_embedding", "ln_final.weight"} <= plan.keys() else None


def apply_recipe(recipe: Recipe, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The open_clip tensor a recipe builds from source tensors fetched by ``get``."""
    op, sources = recipe
    return OPS[op]([get(s) for s in sources])


def recipe_shape(recipe: Recipe, shape: Callable[[str], tuple[int, ...]]) -> tuple[int, ...]:
    """The shape ``apply_recipe`` would produce, from source shapes only."""
    op, sources = recipe
    return SHAPES[op]([tuple(shape(s)) for s in sources])


def hf_to_open_clip(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Eager conversion of a Hugging Face CLIP (vision) state dict to open_clip visual names."""
    plan = hf_plan(state.keys())
    return {key: apply_recipe(recipe, state.__getitem__) for key, recipe in plan.items()}


def open_clip_to_hf(state: Mapping[str, torch.Tensor], prefix: str = "vision_model.") -> StateDict:
    """The inverse: open_clip visual names to ``CLIPVisionModel`` names (+ ``visual_projection``)."""
    inverse = {v: k for k, v in _RENAMES.items()}
    blocks = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: StateDict = {}
    for key, value in state.items():
        match = _OC_BLOCK.match(key)
        if key == "proj":
            out[PROJECTION] = value.T.contiguous()  # (D, P) -> (P, D)
        elif key in inverse:
            out[prefix + inverse[key]] = value
        elif match and match.group(2) == "attn.in_proj":
            layer = f"{prefix}encoder.layers.{match.group(1)}.self_attn"
            for name, part in zip(_QKV, value.chunk(3, dim=0)):  # (3D, ...) -> 3 × (D, ...)
                out[f"{layer}.{name}.{match.group(3)}"] = part.contiguous()
        elif match and match.group(2) in blocks:
            out[f"{prefix}encoder.layers.{match.group(1)}.{blocks[match.group(2)]}.{match.group(3)}"] = value
        else:
            raise CheckpointError(f"open_clip key {key!r} has no Hugging Face counterpart")
    return out


@dataclass(frozen=True)
class HfVision:
    """What a Hugging Face folder says about its vision tower beyond the weights."""

    act: str = "quick_gelu"  # CLIPVisionConfig's default hidden_act
    heads: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


ACTS = ("quick_gelu", "gelu")  # Hugging Face hidden_act values with an open_clip counterpart


def read_hf_config(folder: str | Path) -> HfVision:
    """Activation and head count from ``config.json``; mean/std from ``preprocessor_config.json``."""
    folder = Path(folder)
    config = read_json_object(folder / "config.json")
    vision = config.get("vision_config", config)
    act = vision.get("hidden_act", HfVision.act)
    if act not in ACTS:
        raise CheckpointError(f"{folder}/config.json: hidden_act {act!r} is not supported "
                              f"(supported: {', '.join(ACTS)})")
    pre = read_json_object(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    mean, std = pre.get("image_mean"), pre.get("image_std")
    return HfVision(act=act, heads=vision.get("num_attention_heads"),
                    mean=tuple(mean) if mean else None, std=tuple(std) if std else None)


