"""The study's part 4: train the self-built CNN, or fine-tune a backbone, on a subset folder
(made by :func:`~convsight.studies.subset.make_subset`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from convsight.data.folder import (
    FolderData,
    FolderImages,
    class_folders,
    class_means,
    load_folder,
)
from convsight.errors import ConvsightError
from convsight.models import ModelCard, build_seed, card_path, load_model, replace_head
from convsight.models.seed_source import SEEDS
from convsight.models.torchvision_source import torchvision_card, torchvision_models
from convsight.report import (
    out_dir_kept_if_written,
    training_curves,
    write_checkpoint,
    write_figure,
    write_json,
    write_npz,
)
from convsight.report.grids import image_grid
from convsight.report.notebook import Tile, figure_tile
from convsight.report.plots import confusion_matrix
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.numbers import STUDY
from convsight.studies.training import TrainingResult, trained_model
from convsight.train import check_lr, evaluate, fit


def folder_loader(
    data: FolderData | Dataset, card: ModelCard, batch_size: int, train: bool, seed: int
) -> DataLoader:
    """Normalized batches of ``data`` (held pixels, or a dataset of ``(uint8 pixels, label)``
    such as :class:`FolderImages`, decoded a batch at a time) for ``card``; a training loader
    shuffles and flips at random (both seeded by ``seed``)."""
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    generator = torch.Generator().manual_seed(seed)

    def collate(batch):
        x = torch.stack([b[0] for b in batch]).float().div_(255)
        y = torch.stack([b[1] for b in batch])
        if train:  # random horizontal flips
            flip = torch.rand(len(x), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
        return (x - mean) / std, y

    return DataLoader(
        TensorDataset(data.pixels, data.labels) if isinstance(data, FolderData) else data,
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )


def _build(
    model: str,
    classes: list[str],
    image_size: int,
    finetune: bool,
    weights: str | os.PathLike | None,
) -> tuple[torch.nn.Module, ModelCard, list | None]:
    """The network to train, its card and (when fine-tuning) the parameters to train."""
    if model in SEEDS:
        if finetune:
            raise ConvsightError(f"--finetune needs a pretrained backbone, not '{model}'")
        options = {"num_classes": len(classes), "image_size": image_size, "labels": classes}
        module, card = build_seed(model, options)
        card.labels = list(classes)
        return module, card, None
    if model not in torchvision_models():
        raise ConvsightError(f"unknown model '{model}' for training")
    if finetune:
        backbone = load_model(model, weights)
        module, base = backbone.module, backbone.card
    else:
        pretrained = load_model(model, weights) if weights else None
        import torchvision.models as tvm

        module = pretrained.module if pretrained else tvm.get_model(model, weights=None)
        base = pretrained.card if pretrained else torchvision_card(model)
    head = replace_head(module, len(classes))
    card = ModelCard(
        name=f"{model}-{len(classes)}-class",
        arch=f"torchvision:{model}",
        input_size=(image_size, image_size),
        channels=base.channels,
        mean=base.mean,
        std=base.std,
        labels=list(classes),
        resize=round(image_size * 256 / 224),
        source=("fine-tuned head on " if finetune else "trained from ") + (base.source or model),
    )
    params = list(module.get_submodule(head).parameters()) if finetune else None
    if not finetune:
        for p in module.parameters():
            p.requires_grad_(True)
    return module, card, params


def subset_classes(data: Path) -> list[str]:
    """The classes of a subset folder: the same ones (at least two) in train/ and test/."""
    for split in ("train", "test"):
        if not (data / split).is_dir():
            raise ConvsightError(
                f"{data} has no {split}/ folder (make one with convsight data subset)"
            )
    classes = [d.name for d in class_folders(data / "train")]
    test_classes = [d.name for d in class_folders(data / "test")]
    if len(classes) < 2 or classes != test_classes:
        raise ConvsightError(
            f"train/ and test/ in {data} must hold the same classes (at least two): "
            f"{classes} vs {test_classes}"
        )
    return classes


def _confusion(
    labels: torch.Tensor, predictions: torch.Tensor, classes: list[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The confusion matrix (rows: true class) and each class's accuracy."""
    k = len(classes)
    matrix = torch.zeros(k, k, dtype=torch.long)
    matrix.index_put_((labels, predictions), torch.ones_like(predictions), accumulate=True)
    per_class = {
        c: float(matrix[i, i] / max(int(matrix[i].sum()), 1)) for i, c in enumerate(classes)
    }
    return matrix, per_class


@dataclass(frozen=True)
class SubsetTrainingRequest:
    """One training run on a subset folder (``data/train``, ``data/test``): the network
    (``five-class-cnn``, or a torchvision backbone with a new head), whether only that head
    is trained (``finetune``, on pretrained ``weights``; None: torchvision's), the input side,
    the epochs, batch size and Adam's learning rate, the output folder, the seed and the
    device. The learning rate and input side are checked when made."""

    data: str | os.PathLike
    out: str | os.PathLike = "runs/subset"
    model: str = "five-class-cnn"
    finetune: bool = False
    weights: str | os.PathLike | None = None
    image_size: int = 224
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        """One sentence for a learning rate or input side that cannot work."""
        check_lr(self.lr)
        if self.image_size < 16:
            raise ConvsightError("--image-size must be at least 16")


@dataclass(kw_only=True)
class SubsetTrainingResult(TrainingResult):
    """The network trained on a subset (see :class:`TrainingResult`; ``spec``: the model
    asked for): whether only its head was trained and on which weights, the classes, the
    last epoch's train accuracy, each class's test accuracy, the confusion matrix (rows: true
    class) and the images that could not be read; ``files``: ``model.pt`` and its card,
    ``class_means.npz``/``.png``, ``training_curves.png``, ``confusion_matrix.png`` and
    ``metrics.json``."""

    finetune: bool
    weights: str | None
    classes: list[str]
    train_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]
    skipped_images: list[dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        """What ``metrics.json`` holds."""
        return {
            "model": self.spec,
            "finetune": self.finetune,
            "weights": self.weights,
            "classes": self.classes,
            "settings": self.settings,
            "history": self.rows,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion_matrix": self.confusion_matrix,
            "skipped_images": self.skipped_images,
            "study": STUDY.five_class_json(),
            "seconds": self.seconds,
        }

    def tiles(self) -> list[Tile]:
        """The training curves and the confusion matrix (the classes as labels)."""
        title = self.model.card.name + (" (fine-tuned head)" if self.finetune else "")
        matrix = confusion_matrix(self.confusion_matrix, self.classes, title)
        return super().tiles() + [figure_tile(matrix, "confusion matrix (rows: true class)")]

    def facts(self) -> list[tuple[str, Any]]:
        """The training facts, then each class's test accuracy (a line each)."""
        per_class = [(c, f"{a:.4f}") for c, a in self.per_class_accuracy.items()]
        return super().facts() + per_class


def train_subset(request: SubsetTrainingRequest) -> SubsetTrainingResult:
    """Train on ``data/train``, test on ``data/test``; write checkpoint + card, metrics.json,
    training curves, confusion matrix, per-class accuracy and the class-mean images. The
    network is built here (see :func:`_build`): its head follows the subset's classes.
    Every input is checked (the images read) before the output folder is created."""
    r = request
    data = Path(r.data)
    classes = subset_classes(data)
    dev = resolve_device(r.device)
    seed_everything(r.seed)
    module, card, params = _build(r.model, classes, r.image_size, r.finetune, r.weights)
    train_data, test_data = load_splits(data, card, classes, r.show_progress)
    test_loader = folder_loader(test_data, card, r.batch_size, False, r.seed)
    start = time.perf_counter()
    with out_dir_kept_if_written(r.out) as out:  # a diverged run leaves no empty folder
        train_loader = folder_loader(train_data, card, r.batch_size, True, r.seed)
        history = fit(
            module, train_loader, test_loader, r.epochs, r.lr, dev, r.show_progress,
            parameters=params,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    card.source += f"; convsight train subset {data}, {r.epochs} epochs, seed {r.seed}"
    _, test_accuracy, predictions = evaluate(module, test_loader, dev)
    matrix, per_class = _confusion(test_data.labels, predictions, classes)
    files = [write_checkpoint(out / "model.pt", module.cpu(), card), card_path(out / "model.pt")]
    result = SubsetTrainingResult(
        model=trained_model(module, card),
        spec=r.model,
        settings=_settings(r, dev, train_data, test_data),
        history=history,
        test_accuracy=test_accuracy,
        seconds=seconds,
        finetune=r.finetune,
        weights=str(r.weights) if r.weights else None,
        classes=classes,
        train_accuracy=history[-1].train_accuracy,
        per_class_accuracy=per_class,
        confusion_matrix=matrix.tolist(),
        skipped_images=train_data.skipped + test_data.skipped,
    )
    result.files = files + _write_figures(out, result, train_data, data.name)
    return result


def load_splits(
    data: Path, card: ModelCard, classes: list[str], show_progress: bool
) -> tuple[FolderData, FolderData]:
    """The train and test splits of a subset folder, held at once (:func:`load_folder`);
    every class must keep a training image."""
    train_data = load_folder(data / "train", card, classes, show_progress)
    test_data = load_folder(data / "test", card, classes, show_progress)
    _require_every_class(train_data.labels, classes, data / "train")
    return train_data, test_data


def read_splits(
    data: Path, card: ModelCard, classes: list[str]
) -> tuple[FolderImages, FolderImages]:
    """The train and test splits of a subset folder as :class:`FolderImages` (decoded a batch
    at a time; the files' headers checked now); every class must keep a training image."""
    train_images = FolderImages(data / "train", card, classes)
    test_images = FolderImages(data / "test", card, classes)
    _require_every_class(train_images.labels, classes, data / "train")
    return train_images, test_images


def _require_every_class(labels: torch.Tensor, classes: list[str], folder: Path) -> None:
    empty = [c for i, c in enumerate(classes) if not (labels == i).any()]
    if empty:
        raise ConvsightError(
            f"class(es) {', '.join(empty)} have no readable training image in {folder}"
        )


def _settings(
    request: SubsetTrainingRequest, device: torch.device, train: FolderData, test: FolderData
) -> dict[str, Any]:
    """The settings ``metrics.json`` records."""
    r = request
    return {
        "image_size": r.image_size,
        "epochs": r.epochs,
        "batch_size": r.batch_size,
        "lr": r.lr,
        "optimizer": "Adam",
        "loss": "cross-entropy",
        "seed": r.seed,
        "device": str(device),
        "train_examples": len(train.labels),
        "test_examples": len(test.labels),
    }


def _write_figures(
    out: Path, result: SubsetTrainingResult, train_data: FolderData, data_name: str
) -> list[Path]:
    """Write the class means, the training curves, the confusion matrix and
    ``metrics.json``; the files written."""
    title = f"{result.model.card.name} on {data_name}"
    title += " (fine-tuned head)" if result.finetune else ""
    means = class_means(train_data)
    grid = image_grid(means, result.classes, title="class means (train)")
    matrix = confusion_matrix(result.confusion_matrix, result.classes, title)
    return [
        write_npz(out / "class_means.npz", means=means, labels=result.classes),
        write_figure(out / "class_means.png", grid),
        write_figure(out / "training_curves.png", training_curves(result.rows, title)),
        write_figure(out / "confusion_matrix.png", matrix),
        write_json(out / "metrics.json", result.to_json()),
    ]
