"""Weight averaging (Wortsman et al., "Model soups", ICML 2022, arXiv:2203.05482, the uniform
soup): θ = θ0 + (1/T) Σt τt, i.e. Δ = Σt τt with α fixed to 1/T.  docs/design.md, Methods.

α depends on T: the registry entry carries the rule (``FixedAlpha``), and ``Merger.update``
returns ``MergeUpdate.fixed_alpha = 1/T``.
"""

from __future__ import annotations

from merging.methods.task_arithmetic import task_arithmetic
from merging.registry import FixedAlpha, Method, register


METHOD = register(Method(
    name="weight_averaging",
    display_name="Weight averaging",
    paper_url="https://arxiv.org/abs/2203.05482",
    summary="Averages the fine-tuned weights: θ = θ0 + (1/T)·Σt τt (α is fixed to 1/T).",
    fn=task_arithmetic,  # Δ = Σt τt; the merge applies α = 1/T
    color="#868E96",
    sum_basis=lambda sigma, num_tasks: sigma / num_tasks,  # (1/T)·S
    linear=True,
    fixed_alpha=FixedAlpha(rule=lambda num_tasks: 1.0 / num_tasks, label="1/T"),
))
