"""Store-backed evaluation of merged models on a zoo (docs/design.md, Analysis definitions: accuracy, α selection).

``Evaluator`` ties a ``Zoo``, one ``Merger`` over its checkpoints (so every decomposition is
computed once) and a ``ResultStore``: each accuracy is looked up in the store first and, when
missing, computed and committed at once. Re-running anything (a report, a sweep killed half
way) therefore evaluates only the points not yet stored.

Reference rows: zero-shot is θ0 (stored as method ``zero_shot``, α = 0) and fine-tuned is θt
scored on its own task t (method ``finetuned``, α = 1).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from analysis.alpha import ALPHA_GRID, AlphaSearch, fixed_alpha, search_alpha
from analysis.decompositions import Decompositions, resolve
from analysis.metrics import accuracy_table, mean_normalized
from analysis.seed import seed_store
from analysis.store import FULL, ResultStore, canonical_params
from merging import settings
from merging.errors import IsoscopeError
from merging.merge import Merger, MergeUpdate
from merging.registry import get_method
from zoo.base import SPLITS, Zoo

log = logging.getLogger(__name__)

ZERO_SHOT = "zero_shot"
FINETUNED = "finetuned"


class Evaluator:
    """Accuracy of any (method, params, α) on a zoo's tasks, cached in a result store."""

    def __init__(self, zoo: Zoo, merger: Merger | None = None, store: ResultStore | None = None,
                 device: str | torch.device | None = None) -> None:
        self.zoo = zoo
        self.tasks: list[str] = list(zoo.tasks)
        self.merger = merger if merger is not None else Merger(zoo.pretrained(), zoo.all_finetuned(), device=device)
        self.store = store if store is not None else ResultStore()
        if settings.value("seed_results"):  # the embedded zoo ships its results: a first visit reads them
            seed_store(self.store, zoo.fingerprint, getattr(zoo, "results_asset", None))
        self.decompositions = Decompositions(self.merger, self.tasks, fingerprint=zoo.fingerprint, store=self.store)
        self._updates: OrderedDict[tuple[str, str], MergeUpdate] = OrderedDict()
        self._updates_lock = threading.Lock()
        self.evaluations = 0  # model × task evaluations actually run (not served by the store)
        self._count_lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self.zoo.fingerprint

    @property
    def budget(self) -> int:
        """The store key's evaluation budget: the zoo's ``max_images``, or ``FULL``."""
        return self.zoo.max_images or FULL

    def sample_sizes(self, split: str) -> dict[str, int | None]:
        """Per task, the images its accuracies on ``split`` are measured on when that is a sample
        (the quick mode), else None."""
        return {t: self.zoo.sample_size(t, split) for t in self.tasks}

    def _require_data(self) -> None:
        if not self.zoo.has_data:
            raise IsoscopeError(f"zoo '{self.zoo.name}' has no evaluation data: accuracy needs a data folder (--data)")

    def _cached(self, method: str, params: Mapping[str, Any], alpha: float, split: str,
                compute: Any) -> dict[str, float]:
        """Stored accuracies of one point; the missing tasks are computed by ``compute(tasks)``."""
        found = self.store.get(self.fingerprint, method, params, alpha, split, self.tasks, self.budget)
        missing = [t for t in self.tasks if t not in found]
        if missing:
            self._require_data()
            fresh = compute(missing)
            with self._count_lock:  # sessions share this evaluator
                self.evaluations += len(missing)
            self.store.put(self.fingerprint, method, params, alpha, split, fresh, self.budget)
            found.update(fresh)
        return {t: found[t] for t in self.tasks}

    def zero_shot(self, split: str = "test") -> dict[str, float]:
        """Accuracy of θ0 per task."""
        return self._cached(ZERO_SHOT, {}, 0.0, split,
                            lambda tasks: self.zoo.evaluate_tasks(self.zoo.pretrained(), tasks, split))

    def finetuned(self, split: str = "test") -> dict[str, float]:
        """Accuracy of θt on its own task t."""
        return self._cached(FINETUNED, {}, 1.0, split,
                            lambda tasks: {t: self.zoo.evaluate(self.zoo.finetuned(t), t, split) for t in tasks})

    def _model_bytes(self) -> int:
        """Bytes of one fp32 merged update (base and Δ over every key)."""
        return 2 * 4 * sum(math.prod(shape) for shape in self.merger.shapes.values())

    def update(self, method: str, params: Mapping[str, Any] | None = None) -> MergeUpdate:
        """The merged update of ``method`` (kept while it fits the update cache, $ISOSCOPE_UPDATE_CACHE_MB, so an α search
        recombines it without merging again). Shared between threads: never mutated."""
        name, resolved = resolve(method, params)
        key = (name, canonical_params(resolved))
        with self._updates_lock:
            found = self._updates.get(key)
            if found is not None:
                self._updates.move_to_end(key)
                return found
        update = self.merger.update(name, resolved)
        with self._updates_lock:
            self._updates[key] = update
            while len(self._updates) * self._model_bytes() > settings.value("update_cache") and len(self._updates) > 1:
                self._updates.popitem(last=False)
        return update

    def merged_state(self, method: str, params: Mapping[str, Any] | None, alpha: float) -> dict[str, torch.Tensor]:
        """θ = base + α·Δ: recombined from a kept update for models that fit the update budget,
        else merged key by key straight into the state dict (one model in memory)."""
        if self._model_bytes() <= settings.value("update_cache"):
            return self.update(method, params).state(alpha)
        return self.merger.merged(method, params, alpha)

    def accuracy(self, method: str, params: Mapping[str, Any] | None, alpha: float,
                 split: str = "test") -> dict[str, float]:
        """Accuracy per task of θ = base + α·Δ of ``method`` with ``params``."""
        name, resolved = resolve(method, params)
        return self._cached(name, resolved, alpha, split, lambda tasks: self.zoo.evaluate_tasks(
            self.merged_state(name, resolved, alpha), tasks, split))

    def val_score(self, method: str, params: Mapping[str, Any] | None, alpha: float) -> float:
        """Mean normalized validation accuracy at α (the α-selection criterion)."""
        return mean_normalized(self.accuracy(method, params, alpha, "val"), self.finetuned("val"))

    def choose_alpha(self, method: str, params: Mapping[str, Any] | None = None, alpha: float | None = None,
                     grid: Sequence[float] = ALPHA_GRID, start: float | None = None) -> AlphaSearch:
        """α fixed by the method (it wins, as in ``MergeUpdate.state``), else given by the user, else
        chosen on validation (coarse-to-fine, or a hill-climb from ``start``; see ``analysis.alpha``)."""
        fixed = get_method(method).alpha_for(self.merger.num_tasks)
        fixed = alpha if fixed is None else fixed
        if fixed is not None:
            return fixed_alpha(fixed)
        return search_alpha(lambda a: self.val_score(method, params, a), grid, start=start)

    def table(self, method: str, params: Mapping[str, Any] | None = None, alpha: float | None = None,
              splits: Sequence[str] = SPLITS, start: float | None = None) -> tuple[pd.DataFrame, AlphaSearch]:
        """Per task accuracy, normalized accuracy and NAI on ``splits`` at the chosen α."""
        choice = self.choose_alpha(method, params, alpha, start=start)
        frames = [accuracy_table(method, choice.alpha, split, self.accuracy(method, params, choice.alpha, split),
                                 self.zero_shot(split), self.finetuned(split), self.sample_sizes(split))
                  for split in splits]
        return pd.concat(frames, ignore_index=True), choice

    def reference_table(self) -> pd.DataFrame:
        """Zero-shot and fine-tuned rows in the layout of ``table``."""
        frames = []
        for split in SPLITS:
            zs, ft, sizes = self.zero_shot(split), self.finetuned(split), self.sample_sizes(split)
            frames += [accuracy_table(ZERO_SHOT, 0.0, split, zs, zs, ft, sizes),
                       accuracy_table(FINETUNED, 1.0, split, ft, zs, ft, sizes)]
        return pd.concat(frames, ignore_index=True)
