"""Task-vector norms and cosines against a plain flattened reference."""

from __future__ import annotations

import numpy as np
import torch

from analysis.similarity import norms_and_cosines


def test_closed_form_orthogonal_and_parallel() -> None:
    a = {"w": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([4.0])}   # ‖a‖ = 5
    b = {"w": torch.tensor([[0.0, 2.0]]), "b": torch.tensor([0.0])}   # orthogonal to a
    c = {"w": torch.tensor([[6.0, 0.0]]), "b": torch.tensor([8.0])}   # 2·a
    norms, cos = norms_and_cosines([a, b, c], ["A", "B", "C"])
    assert norms["norm"].tolist() == [5.0, 2.0, 10.0]
    assert cos.loc["A", "B"] == 0.0 and np.isclose(cos.loc["A", "C"], 1.0) and np.isclose(cos.loc["B", "B"], 1.0)


def test_matches_flattened_reference_and_zero_vector_is_nan() -> None:
    g = torch.Generator().manual_seed(0)
    tvs = [{"x": torch.randn(4, 3, generator=g), "y": torch.randn(5, generator=g)} for _ in range(3)]
    tvs.append({"x": torch.zeros(4, 3), "y": torch.zeros(5)})
    norms, cos = norms_and_cosines(tvs, list("abcd"))
    flat = torch.stack([torch.cat([tv["x"].reshape(-1), tv["y"]]) for tv in tvs[:3]]).double()
    ref = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1).numpy()
    np.testing.assert_allclose(cos.iloc[:3, :3].to_numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(norms["norm"][:3], flat.norm(dim=1).numpy(), atol=1e-12)
    assert np.isnan(cos.loc["d", "a"]) and norms["norm"].iloc[3] == 0.0
