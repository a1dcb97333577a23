"""What a training study returns: the trained network, its history and its test accuracy.

:class:`TrainingResult` is the part :func:`~convsight.studies.mnist.train_mnist` and
:func:`~convsight.studies.five_class.train_subset` share; each subclasses it with what its
``metrics.json`` holds besides.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard
from convsight.report import atomic_path, prepare_out_dir, training_curves
from convsight.report.notebook import Tile, figure_tile
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

    @property
    def title(self) -> str:
        """The heading of the views: the kind and the trained network's card name."""
        return f"{type(self).__name__.removesuffix('Result')}: {self.model.card.name}"

    def curves(self) -> Figure:
        """The training curves (accuracy and loss per epoch, train and test)."""
        return training_curves(self.rows, self.model.card.name)

    def tiles(self) -> list[Tile]:
        """The training curves."""
        return [figure_tile(self.curves(), f"training curves, {len(self.history)} epochs")]

    def facts(self) -> list[tuple[str, Any]]:
        """The network, its test accuracy, the epochs, the examples and the time."""
        settings, name = self.settings, self.model.card.name
        return [
            ("model", name if name == self.spec else f"{name} ({self.spec})"),
            ("test accuracy", f"{self.test_accuracy:.4f}"),
            ("epochs", len(self.history)),
            ("examples", f"{settings.get('train_examples')} train, "
             f"{settings.get('test_examples')} test"),
            ("device", settings.get("device")),
            ("seconds", f"{self.seconds:.1f}"),
        ]  # fmt: skip

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Copy the files written while training (checkpoint, card, ``metrics.json``,
        figures: all in one folder) into ``out``, each written whole; returns the copies
        (also ``files``)."""
        if not self.files:
            raise ConvsightError(f"{type(self).__name__} has no files to copy")
        source = self.files[0].parent
        stray = [p for p in self.files if p.parent != source]
        if stray:
            raise ConvsightError(f"{stray[0]} is not in {source}; nothing copied")
        out = prepare_out_dir(out)
        copies = []
        for path in self.files:
            with atomic_path(out / path.name, within=out) as tmp:
                shutil.copyfile(path, tmp)
            copies.append(out / path.name)
        self.files = copies
        return copies


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
