"""The zoo interface shared by every source of models (docs/design.md, Where models come from).

A zoo is a pretrained image encoder θ0, one fine-tuned encoder θt per task, a frozen
classification head per task, and (when data is available) val/test splits to score on.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import torch

from merging.tensors import StateDict

SPLITS = ("test", "val")  # the evaluation splits, in the order tables report them


class Zoo(abc.ABC):
    """Abstract zoo. Returned state dicts are shared and must never be mutated."""

    name: str
    tasks: list[str]
    max_images: int | None = None  # the quick mode's budget per task and split (None: every image)

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short stable hash identifying this zoo's weights and data (keys the result store)."""

    @abc.abstractmethod
    def pretrained(self) -> StateDict:
        """θ0, the pretrained image-encoder state dict."""

    @abc.abstractmethod
    def finetuned(self, task: str) -> StateDict:
        """θt, the encoder fine-tuned on ``task`` (same keys, shapes and dtypes as θ0)."""

    @property
    def has_data(self) -> bool:
        """Whether ``evaluate`` can score (real folders may come without data)."""
        return True

    @abc.abstractmethod
    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        """Top-1 accuracy (0..1) of encoder ``state_dict`` with ``task``'s frozen head."""

    def sample_size(self, task: str, split: str) -> int | None:
        """Images an accuracy is measured on when that is a sample of the split, else None."""
        return None

    def evaluate_tasks(self, state_dict: StateDict, tasks: Iterable[str] | None = None,
                       split: str = "test") -> dict[str, float]:
        """Accuracy per task; subclasses may batch this (one encoder load for all tasks)."""
        return {t: self.evaluate(state_dict, t, split) for t in (tasks or self.tasks)}

    def all_finetuned(self) -> list[StateDict]:
        return [self.finetuned(t) for t in self.tasks]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")
