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


def test_a_key_no_rule_knows_loses_only_its_wrapper_and_suffix() -> None:
    assert layer_label("model.visual.ln_post.weight") == "ln_post"
    assert layer_label("vision_model.post_layernorm.weight") == "post_layernorm"
    assert layer_label("visual.proj") == "proj"


def test_colliding_labels_fall_back_to_stripped_keys_then_to_the_keys() -> None:
    keys = ["model.visual.transformer.resblocks.0.attn.in_proj_weight",  # label blk0 · attn.in_proj, and
            "transformer.resblocks.0.attn.in_proj_weight",  # all three strip to this very key:
            "visual.transformer.resblocks.0.attn.in_proj_weight",  # only the keys themselves differ
            "model.visual.positional_embedding",  # label pos_embed, stripped: positional_embedding
            "vision_model.embeddings.position_embedding.weight",  # pos_embed, stripped: embeddings.position_embedding
            "class_embedding"]
    labels = layer_labels(keys)
    assert [labels[k] for k in keys[:3]] == keys[:3]
    assert labels[keys[3]] == "positional_embedding" and labels[keys[4]] == "embeddings.position_embedding"
    assert labels[keys[5]] == "cls_embed"  # no clash: the short label stays
    assert len(set(labels.values())) == len(keys)
