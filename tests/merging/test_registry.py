"""The registry's fixed-α rule: weight averaging fixes α = 1/T; other methods leave it free."""

from __future__ import annotations

import pytest

from merging.registry import all_methods, get_method


@pytest.mark.parametrize("num_tasks", [1, 3, 8, 20])
def test_weight_averaging_fixes_alpha_to_one_over_t(num_tasks: int) -> None:
    method = get_method("weight_averaging")
    assert method.alpha_for(num_tasks) == pytest.approx(1 / num_tasks)
    assert method.fixed_alpha is not None and method.fixed_alpha.label == "1/T"


def test_every_other_method_leaves_alpha_free() -> None:
    free = {name for name, m in all_methods().items() if m.alpha_for(8) is None}
    assert free == set(all_methods()) - {"weight_averaging"}
