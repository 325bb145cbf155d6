"""Store-backed evaluation, α selection and sweeps on a synthetic zoo with a closed-form score."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from analysis.alpha import ALPHA_GRID
from analysis.evaluation import Evaluator
from analysis.store import ResultStore
from analysis.sweeps import alpha_sweep, fraction_sweep, sweep_average
from merging.errors import IsoscopeError
from tests.analysis.synthetic import SCALE, SyntheticZoo


@pytest.fixture
def ev(tmp_path: Path) -> Evaluator:
    return Evaluator(SyntheticZoo(), store=ResultStore(tmp_path / "r.sqlite"))


def _ta_state(zoo: SyntheticZoo, alpha: float) -> dict[str, torch.Tensor]:
    return {k: v + alpha * sum(zoo.finetuned(t)[k] - v for t in zoo.tasks) for k, v in zoo.pretrained().items()}


def test_references_match_closed_form(ev: Evaluator) -> None:
    assert ev.finetuned("test") == pytest.approx({t: 1.0 for t in ev.tasks})
    assert ev.zero_shot("val") == pytest.approx({t: math.exp(-1 / SCALE["val"]) for t in ev.tasks})


def test_accuracy_is_the_zoo_score_of_base_plus_alpha_delta(ev: Evaluator) -> None:
    zoo = ev.zoo
    got = ev.accuracy("task_arithmetic", None, 0.4, "test")
    assert got == pytest.approx({t: zoo.expected(_ta_state(zoo, 0.4), t, "test") for t in zoo.tasks}, rel=1e-5)


def test_alpha_chosen_on_val_is_grid_argmax_with_fewer_evaluations_and_cached(ev: Evaluator) -> None:
    zoo = ev.zoo
    ft = {t: 1.0 for t in zoo.tasks}
    exhaustive = {a: sum(zoo.expected(_ta_state(zoo, a), t, "val") / ft[t] for t in zoo.tasks) / len(zoo.tasks)
                  for a in ALPHA_GRID}
    best = max(ALPHA_GRID, key=lambda a: (exhaustive[a], -a))
    choice = ev.choose_alpha("task_arithmetic")
    assert choice.alpha == best and choice.evaluations < len(ALPHA_GRID)
    val_calls = [c for c in zoo.calls if c[1] == "val"]
    assert len(val_calls) == len(zoo.tasks) * (choice.evaluations + 1)  # +1: the fine-tuned references
    before = len(zoo.calls)
    assert ev.choose_alpha("task_arithmetic").alpha == best and len(zoo.calls) == before  # all from the store
    assert Evaluator(zoo, merger=ev.merger, store=ev.store).choose_alpha("task_arithmetic").alpha == best
    assert len(zoo.calls) == before


def test_fixed_alpha_and_table(ev: Evaluator) -> None:
    assert ev.choose_alpha("weight_averaging").alpha == pytest.approx(1 / 3)  # fixed by the method
    assert ev.choose_alpha("task_arithmetic", alpha=0.7).alpha == 0.7  # fixed by the user
    # the method's own α wins over a user's, as in MergeUpdate.state: never score 1/T under another label
    assert ev.choose_alpha("weight_averaging", alpha=0.7).alpha == pytest.approx(1 / 3)
    table, choice = ev.table("task_arithmetic", alpha=0.5)
    assert set(table["split"]) == {"test", "val"} and len(table) == 2 * len(ev.tasks)
    row = table[(table["split"] == "test") & (table["task"] == "B")].iloc[0]
    zs = math.exp(-1 / SCALE["test"])
    assert row["nai"] == pytest.approx((row["accuracy"] - zs) / (1 - zs)) and row["normalized"] == row["accuracy"]


def test_no_data_is_a_readable_error(tmp_path: Path) -> None:
    class NoData(SyntheticZoo):
        has_data = False

    ev = Evaluator(NoData(), store=ResultStore(tmp_path / "r.sqlite"))
    with pytest.raises(IsoscopeError, match="no evaluation data"):
        ev.zero_shot()


def test_fraction_sweep_reuses_one_merger_and_reaches_iso_c_at_one(ev: Evaluator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from merging.merge import Merger
    from merging.methods import common

    built, svds = [], []
    monkeypatch.setattr(Merger, "__init__", lambda self, *a, **k: built.append(1))  # a new Merger would break
    real_svd = common.fast_svd
    monkeypatch.setattr(common, "fast_svd", lambda a: svds.append(a.shape) or real_svd(a))
    table = fraction_sweep(ev, [0.0, 0.5, 1.0], alpha=1.0)
    assert built == []  # every point merged on the evaluator's own Merger
    assert len(svds) == len(ev.merger.matrix_keys)  # one SVD of Σt Δt per matrix, shared by the 3 points
    assert len(table) == 3 * 2 * len(ev.tasks) and set(table["param"]) == {"common_fraction"}
    iso_c = ev.accuracy("iso_c", None, 1.0, "test")
    at_one = table[(table["value"] == 1.0) & (table["split"] == "test")]
    assert dict(zip(at_one["task"], at_one["accuracy"])) == pytest.approx(iso_c, rel=1e-4)
    avg = sweep_average(table)
    assert len(avg) == 6 and set(avg["split"]) == {"test", "val"}


def test_alpha_sweep_rows(ev: Evaluator) -> None:
    table = alpha_sweep(ev, "task_arithmetic", alphas=[0.2, 0.4])
    assert sorted(set(table["alpha"])) == [0.2, 0.4] and (table["value"] == table["alpha"]).all()


class SampledZoo(SyntheticZoo):
    """The synthetic zoo in quick mode: scores on a sample of ``max_images`` images differ from
    the full split's by a fixed offset, so a mixed-up store would show."""

    OFFSET = -0.125

    def __init__(self, max_images: int) -> None:
        super().__init__()
        self.max_images = max_images

    def sample_size(self, task: str, split: str) -> int | None:
        return self.max_images

    def evaluate(self, state_dict: dict, task: str, split: str = "test") -> float:
        return super().evaluate(state_dict, task, split) + self.OFFSET


def test_sampled_and_full_results_never_mix(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    full = Evaluator(SyntheticZoo(), store=store)
    sampled = Evaluator(SampledZoo(max_images=40), store=store)
    assert full.fingerprint == sampled.fingerprint  # same weights and data: only the budget differs
    want = full.accuracy("task_arithmetic", None, 0.4)
    got = sampled.accuracy("task_arithmetic", None, 0.4)
    assert sampled.evaluations == len(sampled.tasks)  # nothing was served from the full rows
    assert got == pytest.approx({t: a + SampledZoo.OFFSET for t, a in want.items()})
    assert full.accuracy("task_arithmetic", None, 0.4) == want and full.evaluations == len(full.tasks)
    table, _ = sampled.table("task_arithmetic", None, alpha=0.4, splits=("test",))
    se = [math.sqrt(a * (1 - a) / 40) for a in table["accuracy"]]
    assert table["se"].tolist() == pytest.approx(se)
    assert full.table("task_arithmetic", None, alpha=0.4, splits=("test",))[0]["se"].isna().all()
    averaged = sweep_average(alpha_sweep(sampled, "task_arithmetic", alphas=(0.4,)))
    row = averaged[averaged["split"] == "test"].iloc[0]
    assert row["se"] == pytest.approx(math.sqrt(sum(s * s for s in se)) / len(se))
