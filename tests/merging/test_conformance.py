"""Every registered method against the method contract (tests/merging/conformance.py); and the
suite itself catches a method that breaks the contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from merging.methods.common import Layer, Params
from merging.registry import Method, all_methods, register, unregister
from tests.merging.conformance import CHECKS, check_method


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", list(all_methods()))
def test_every_registered_method_keeps_the_contract(name: str, check: str, tmp_path: Path) -> None:
    check_method(name, tmp_path, (check,))


def _ta_on_sum(layer: Layer, _params: Params) -> torch.Tensor:
    return layer.total()


@pytest.fixture
def throwaway() -> Iterator[str]:
    yield "conformance_throwaway"
    unregister("conformance_throwaway")


@pytest.mark.parametrize("defect, check", [
    ("a σ map that does not match the update", "views"),
    ("a spectrum that does not match the update", "views"),
    ("factors with the wrong left vectors", "views"),
    ("a Δ in float64", "shapes_and_dtype"),
    ("a layer that depends on the previous call", "one_layer"),
])
def test_the_suite_catches_a_broken_method(defect: str, check: str, throwaway: str, tmp_path: Path) -> None:
    """Each defect registered as a method is caught by the named check (the suite can fail)."""
    calls = {"n": 0}

    def stateful(layer: Layer, params: Params) -> torch.Tensor:
        calls["n"] += 1
        return layer.total() * (1 + 0.01 * calls["n"])

    def wrong_factors(layer: Layer, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, _ = layer.sum_svd()
        return torch.roll(u, 1, dims=0), s

    fields = {
        "a σ map that does not match the update": dict(fn=_ta_on_sum, sum_basis=lambda s, t: s / t),
        "a spectrum that does not match the update": dict(fn=_ta_on_sum, spectrum=lambda layer, p: layer.sum_svd()[1] * 2),
        "factors with the wrong left vectors": dict(fn=_ta_on_sum, factors=wrong_factors),
        "a Δ in float64": dict(fn=lambda layer, p: layer.total().double()),
        "a layer that depends on the previous call": dict(fn=stateful),
    }[defect]
    register(Method(name=throwaway, display_name="Throwaway", paper_url="", summary="", color="#000000", **fields))
    with pytest.raises(AssertionError, match=check):
        check_method(throwaway, tmp_path, (check,))
