"""Short layer labels from open_clip and Hugging Face keys."""

from __future__ import annotations

import pytest

from analysis.labels import layer_label, layer_labels


@pytest.mark.parametrize(("key", "label"), [
    ("transformer.resblocks.3.attn.in_proj_weight", "blk3 · attn.in_proj"),
    ("model.visual.transformer.resblocks.11.attn.out_proj.weight", "blk11 · attn.out_proj"),
    ("transformer.resblocks.0.mlp.c_fc.weight", "blk0 · mlp.c_fc"),
    ("visual.transformer.resblocks.2.mlp.c_proj.weight", "blk2 · mlp.c_proj"),
    ("vision_model.encoder.layers.4.self_attn.q_proj.weight", "blk4 · attn.q_proj"),
    ("vision_model.encoder.layers.4.mlp.fc1.weight", "blk4 · mlp.fc1"),
    ("positional_embedding", "pos_embed"),
    ("model.visual.positional_embedding", "pos_embed"),
    ("model.visual.proj", "proj"),
    ("conv1.weight", "conv1"),
])
def test_labels(key: str, label: str) -> None:
    assert layer_label(key) == label


def test_collisions_fall_back_to_stripped_keys() -> None:
    labels = layer_labels(["a.positional_embedding", "b.positional_embedding", "proj"])
    assert labels == {"a.positional_embedding": "a.positional_embedding",
                      "b.positional_embedding": "b.positional_embedding", "proj": "proj"}
