"""Short human labels for parameter keys, e.g. ``transformer.resblocks.3.attn.in_proj_weight``
→ ``blk3 · attn.in_proj``. Rules form a table (pattern → template), tried in order; keys that
match none lose only their wrapper prefix and ``.weight`` suffix."""

from __future__ import annotations

import re
from collections.abc import Iterable

PREFIXES = ("model.visual.", "visual.", "image_encoder.model.visual.", "vision_model.", "model.")

RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # open_clip: transformer.resblocks.{i}.{attn|mlp}.{name}[_weight|.weight]
    (re.compile(r"resblocks\.(\d+)\.(attn|mlp)\.(\w+?)(?:_weight|\.weight)?$"), r"blk\1 · \2.\3"),
    # Hugging Face CLIPVisionModel: encoder.layers.{i}.{self_attn|mlp}.{name}.weight
    (re.compile(r"layers\.(\d+)\.self_attn\.(\w+?)(?:\.weight)?$"), r"blk\1 · attn.\2"),
    (re.compile(r"layers\.(\d+)\.mlp\.(\w+?)(?:\.weight)?$"), r"blk\1 · mlp.\2"),
    (re.compile(r"(?:^|\.)positional_embedding$"), "pos_embed"),
    (re.compile(r"(?:^|\.)position_embedding\.weight$"), "pos_embed"),
    (re.compile(r"(?:^|\.)class_embedding$"), "cls_embed"),
)


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key.removesuffix(".weight")


def layer_label(key: str) -> str:
    """A short label for ``key`` (see module docstring)."""
    for pattern, template in RULES:
        match = pattern.search(key)
        if match:
            return match.expand(template)
    return _strip(key)


def layer_labels(keys: Iterable[str]) -> dict[str, str]:
    """{key: label}, unique: wherever two keys would share a label they fall back to their stripped
    keys, and where those still collide (the same key under two wrapper prefixes) to the keys."""
    keys = list(dict.fromkeys(keys))
    labels = {k: layer_label(k) for k in keys}
    for fallback in (_strip, str):
        clash = _shared(labels.values())
        labels = {k: (fallback(k) if v in clash else v) for k, v in labels.items()}
    return labels


def _shared(labels: Iterable[str]) -> set[str]:
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return {label for label, n in seen.items() if n > 1}
