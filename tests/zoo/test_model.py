"""zoo.model: config inference from key shapes, encoder loading, features and accuracy."""

from __future__ import annotations

import pytest
import torch

from merging.errors import CheckpointError
from zoo.model import VitConfig, accuracy, build_encoder, encode, infer_vit_config, load_encoder, logits

CONFIG = VitConfig(image_size=32, patch_size=8, width=64, layers=3, heads=1, output_dim=24)


def test_infer_config_round_trips_with_and_without_prefix() -> None:
    state = build_encoder(CONFIG).state_dict()
    assert infer_vit_config(state) == CONFIG
    prefixed = {f"model.visual.{k}": v for k, v in state.items()}
    assert infer_vit_config(prefixed, heads=1) == CONFIG
    wide = VitConfig(image_size=224, patch_size=32, width=128, layers=1, heads=2, output_dim=16)
    assert infer_vit_config(build_encoder(wide).state_dict()) == wide  # heads = 128 // 64


def test_infer_config_rejects_non_vit() -> None:
    with pytest.raises(CheckpointError):
        infer_vit_config({"weight": torch.zeros(3, 3)})


def test_load_encoder_reproduces_forward_and_encode_normalises() -> None:
    torch.manual_seed(0)
    source = build_encoder(CONFIG).eval()
    loaded = load_encoder(source.state_dict(), device="cpu")
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(source(x), dim=-1)
    feats = encode(loaded, x, batch_size=3)
    assert feats.shape == (7, 24)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(7))


def test_accuracy_closed_form() -> None:
    head = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (C=2, D=2); scale must not matter
    feats = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(feats, head, labels) == pytest.approx(0.75)
    torch.testing.assert_close(logits(feats, head)[1], torch.tensor([0.2, 0.8]))
