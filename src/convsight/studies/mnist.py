"""The study's part 2: train the MNIST CNN, show its conv outputs for a 7."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from convsight.activations import activations
from convsight.data import exif_orientation, load_image_tensor, load_mnist, mnist_loaders
from convsight.errors import ConvsightError
from convsight.layers import check_map_layers, conv_layer_names
from convsight.models import Model, build_seed, card_path
from convsight.report import (
    channel_grid,
    out_dir_kept_if_written,
    out_file,
    prepare_out_dir,
    training_curves,
    write_checkpoint,
    write_figure,
    write_json,
    write_npz,
)
from convsight.report.grids import image_grid
from convsight.report.notebook import MAX_TILES, Tile
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.numbers import STUDY
from convsight.studies.results import Result
from convsight.studies.training import TrainingResult, loader_size, trained_model
from convsight.train import check_lr, fit

TILE_CHANNELS = 8
"""The most channels of a layer the inline view shows."""


@dataclass(frozen=True)
class MnistTrainingRequest:
    """One training run of the study's MNIST CNN: its convolution ``stride`` (2 as the
    study states, or 1) and ``padding`` (``same`` or ``valid``), the epochs, batch size and
    Adam's learning rate, the first ``train_limit`` / ``test_limit`` digits (None: all), the
    MNIST folder (None: the default), the output folder, the seed and the device. The
    learning rate, epochs and batch size are checked when made."""

    out: str | os.PathLike = "runs/mnist"
    stride: int = 2
    padding: str = "same"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    train_limit: int | None = None
    test_limit: int | None = None
    data_dir: str | os.PathLike | None = None
    seed: int = 0
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        """One sentence for a learning rate, epoch count or batch size that cannot work."""
        check_lr(self.lr)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConvsightError("--epochs and --batch-size must be at least 1")


@dataclass(kw_only=True)
class MnistTrainingResult(TrainingResult):
    """The trained MNIST CNN (see :class:`TrainingResult`) and the torch threads it used;
    ``files``: ``model.pt`` and its card, ``metrics.json`` and ``training_curves.png``."""

    torch_threads: int

    def to_json(self) -> dict[str, Any]:
        """What ``metrics.json`` holds."""
        return {
            "model": self.spec,
            "settings": self.settings,
            "history": self.rows,
            "test_accuracy": self.test_accuracy,
            "study_test_accuracy": STUDY.mnist_test_accuracy,
            "seconds": self.seconds,
            "torch_threads": self.torch_threads,
        }

    def curves(self) -> Figure:
        """The training curves beside the study's test accuracy (``training_curves.png``)."""
        title = f"MNIST CNN, stride {self.settings['stride']}, padding {self.settings['padding']}"
        return training_curves(self.rows, title, STUDY.mnist_test_accuracy)


def train_mnist(request: MnistTrainingRequest) -> MnistTrainingResult:
    """Train the MNIST CNN (built here from the seed, as ``request`` says); write
    ``model.pt`` + card, ``metrics.json`` and ``training_curves.png`` into ``request.out``.
    Every input is checked (the digits read) before the folder is created."""
    r = request
    dev = resolve_device(r.device)
    seed_everything(r.seed)
    module, card = build_seed("mnist-cnn", {"stride": r.stride, "padding": r.padding})
    train_loader, test_loader = mnist_loaders(
        card, r.data_dir, r.batch_size, r.train_limit, r.test_limit, r.seed
    )
    start = time.perf_counter()
    with out_dir_kept_if_written(r.out) as out:  # a diverged run leaves no empty folder
        history = fit(module, train_loader, test_loader, r.epochs, r.lr, dev, r.show_progress)
    seconds = time.perf_counter() - start
    card.source = (
        f"convsight train mnist: stride {r.stride}, padding {r.padding}, {r.epochs} epochs, "
        f"seed {r.seed}"
    )
    files = [write_checkpoint(out / "model.pt", module.cpu(), card), card_path(out / "model.pt")]
    settings = {
        "stride": r.stride,
        "padding": r.padding,
        "epochs": r.epochs,
        "batch_size": r.batch_size,
        "lr": r.lr,
        "optimizer": "Adam",
        "loss": "cross-entropy",
        "train_examples": loader_size(train_loader),
        "test_examples": loader_size(test_loader),
        "seed": r.seed,
        "device": str(dev),
    }
    result = MnistTrainingResult(
        model=trained_model(module, card),
        spec="mnist-cnn",
        settings=settings,
        history=history,
        test_accuracy=history[-1].test_accuracy,
        seconds=seconds,
        torch_threads=torch.get_num_threads(),
    )
    result.files = files + [
        write_json(out / "metrics.json", result.to_json()),
        write_figure(out / "training_curves.png", result.curves()),
    ]
    return result


def first_index_of(labels: torch.Tensor, digit: int) -> int:
    """Index of the first example of ``digit``."""
    hits = (labels == digit).nonzero()
    if len(hits) == 0:
        raise ConvsightError(f"no example of class {digit} in the data")
    return int(hits[0])


def _activation_input(
    card, image: str | os.PathLike | None, mnist_index: int | None, data_dir
) -> tuple[torch.Tensor, str]:
    """The input image (1 x C x H x W in [0, 1]) and a sentence saying where it came from."""
    if image is not None and mnist_index is not None:
        raise ConvsightError("give either --image or --mnist-index, not both")
    if image is not None:
        turned = exif_orientation(image)
        note = f" (EXIF orientation {turned} applied)" if turned != 1 else ""
        return load_image_tensor(image, card), f"{image}{note}"
    if (card.channels, *card.input_size) != (1, 28, 28):
        raise ConvsightError(
            f"model '{card.name}' takes {card.channels}x{card.input_size[0]}x"
            f"{card.input_size[1]} images, not MNIST digits; pass --image FILE"
        )
    images, labels = load_mnist("test", data_dir)
    index = first_index_of(labels, 7) if mnist_index is None else mnist_index
    if index >= len(images):
        raise ConvsightError(f"--mnist-index {index} is out of range (0-{len(images) - 1})")
    pixels = images[index].float().div(255).view(1, 1, 28, 28)
    return pixels, f"MNIST test image {index} (label {int(labels[index])})"


def _prediction(loaded: Model, pixels: torch.Tensor) -> dict[str, Any] | None:
    """The model's top class for the input, when it is a classifier."""
    card = loaded.card
    if not card.num_classes or card.features_only:
        return None
    with torch.no_grad():
        logits = loaded.module(loaded.normalize(pixels.to(loaded.device)))
    top = int(logits.argmax(1))
    return {"class": top, "label": card.label(top)}


def _write_channel_grid(out: Path, model_name: str, name: str, fmap, max_channels: int) -> Path:
    shown = min(max_channels, fmap.shape[0])
    title = f"{model_name} {name}: {fmap.shape[0]} channels, {fmap.shape[1]}x{fmap.shape[2]}"
    if shown < fmap.shape[0]:
        title += f" (first {shown})"
    grid = channel_grid(fmap[:shown], title)
    return write_figure(out_file(out, f"{name}.png"), grid)  # a safe file name


@dataclass(frozen=True)
class ActivationsRequest:
    """What :func:`write_activations` shows: ``layers`` (default: every conv) for one input,
    ``image`` (a file) or MNIST test image ``mnist_index`` (read from ``data_dir``; for
    1x28x28 models without either, the first 7), at most ``max_channels`` channels a grid.
    ``weights`` is only recorded."""

    image: str | os.PathLike | None = None
    mnist_index: int | None = None
    layers: Sequence[str] = ()
    max_channels: int = 64
    data_dir: str | os.PathLike | None = None
    seed: int = 0  # only recorded
    weights: str | os.PathLike | None = None


@dataclass(kw_only=True)
class ActivationsResult(Result):
    """The input (1 x C x H x W, pixel space), each layer's output for it (by layer name,
    1 x C x H x W), where the input came from, the model's top class and each layer's shape
    and dead channels: what ``activations.json`` / ``.npz`` and the grids hold."""

    model: str
    weights: str | None
    input: str
    pixels: torch.Tensor
    maps: dict[str, torch.Tensor]
    prediction: dict[str, Any] | None
    layers: list[dict[str, Any]]
    max_channels: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "input": self.input,
            "prediction": self.prediction,
            "layers": self.layers,
            "settings": {"max_channels": self.max_channels, "seed": self.seed},
        }

    def save(self, out: str | os.PathLike) -> list[Path]:
        """The input, one channel-grid PNG per layer, ``activations.npz`` and
        ``activations.json``."""
        folder = prepare_out_dir(out)
        written = [write_figure(folder / "input.png", image_grid(self.pixels, [self.input]))]
        for name, value in self.maps.items():
            written.append(
                _write_channel_grid(folder, self.model, name, value[0], self.max_channels)
            )
        written.append(write_npz(folder / "activations.npz", None, input=self.pixels, **self.maps))
        written.append(write_json(folder / "activations.json", self.to_json()))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """The input, then each layer's first few channels (as many as fit the view for
        every layer, at most :data:`TILE_CHANNELS`), each map grey from its own min to max."""
        tiles = [Tile(self.pixels[0], "input")]
        per_layer = max(1, min(TILE_CHANNELS, (MAX_TILES - 1) // max(1, len(self.maps))))
        for name, value in self.maps.items():
            fmap = value[0].detach().float().cpu()
            for c in range(min(per_layer, self.max_channels, fmap.shape[0])):
                low, high = fmap[c].min(), fmap[c].max()
                scaled = (fmap[c] - low) / (high - low) if high > low else fmap[c] * 0
                tiles.append(Tile(scaled, f"{name}:{c}"))
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The model, the input, its top class and each layer's shape and dead channels."""
        top = self.prediction
        shapes = ", ".join(
            f"{row['layer']} {'x'.join(map(str, row['shape']))}" for row in self.layers
        )
        dead = sum(len(row["dead_channels"]) for row in self.layers)
        return [
            ("model", self.model),
            ("input", self.input),
            ("prediction", "none" if top is None else f"{top['label']} ({top['class']})"),
            ("layers", shapes),
            ("dead channels", dead),
            ("seed", self.seed),
        ]


def write_activations(
    model: Model, request: ActivationsRequest, out: str | os.PathLike | None = None
) -> ActivationsResult:
    """Each chosen layer's output for the request's input; with ``out``, written there as
    :meth:`ActivationsResult.save` does (one channel-grid PNG per layer, ``activations.npz``
    and ``activations.json``). Every input is checked before anything is computed or
    written. Nothing here is random: ``request.seed`` is recorded (the seed an untrained
    network was built with)."""
    card = model.card
    names = list(request.layers) or conv_layer_names(model.module)
    if not names:
        raise ConvsightError(f"model '{card.name}' has no conv layers; pass --layers")
    check_map_layers(model.module, names, model.example_input())
    pixels, source = _activation_input(card, request.image, request.mnist_index, request.data_dir)
    maps = activations(model, pixels, names)
    for name, value in maps.items():
        if value[0].dim() != 3:
            raise ConvsightError(
                f"layer '{name}' outputs shape {tuple(value[0].shape)}, not a C x H x W map"
            )
    prediction = _prediction(model, pixels)
    folder = None if out is None else prepare_out_dir(out)
    layers = []
    for name, value in maps.items():
        dead = [int(c) for c in (value[0].flatten(1).abs().amax(1) == 0).nonzero()]
        layers.append({"layer": name, "shape": list(value[0].shape), "dead_channels": dead})
    result = ActivationsResult(
        model=card.name,
        weights=str(request.weights) if request.weights else None,
        input=source,
        pixels=pixels,
        maps=maps,
        prediction=prediction,
        layers=layers,
        max_channels=request.max_channels,
        seed=request.seed,
    )
    if folder is not None:
        result.save(folder)
    return result
