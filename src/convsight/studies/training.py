"""What a training study returns: the trained network, its history and its test accuracy.

:class:`TrainingResult` is the part :func:`~convsight.studies.mnist.train_mnist` and
:func:`~convsight.studies.five_class.train_subset` share; each subclasses it with what its
``metrics.json`` holds besides.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from convsight.models import Model, ModelCard
from convsight.studies.results import Result
from convsight.train import EpochResult


@dataclass(kw_only=True)
class TrainingResult(Result):
    """A trained network: ``model`` (eval mode, parameters frozen, on the CPU: what
    ``model.pt`` and its card hold), the ``spec`` it was built from, the settings, one
    :class:`~convsight.train.EpochResult` per epoch, the final test accuracy and the training
    time; ``files``: the checkpoint, its card, ``metrics.json`` and the figures."""

    model: Model
    spec: str
    settings: dict[str, Any]
    history: list[EpochResult]
    test_accuracy: float
    seconds: float

    @property
    def rows(self) -> list[dict[str, float]]:
        """The history as the JSON holds it: one dict per epoch."""
        return [epoch.to_dict() for epoch in self.history]


def trained_model(module: nn.Module, card: ModelCard) -> Model:
    """``module`` (trained, its checkpoint written) as a Model, its card checked as
    :func:`~convsight.models.load_model` checks the checkpoint's."""
    model = Model(module.cpu(), card)
    model.check_card()
    return model


def loader_size(loader: DataLoader) -> int:
    """How many examples ``loader``'s dataset holds (every dataset convsight builds has a
    length)."""
    dataset = loader.dataset
    assert isinstance(dataset, Sized)
    return len(dataset)
