"""``convsight compress``: the study's compression idea against the usual pruning baselines.

For each conv layer of a trained network, and for all of them at once: at each similarity
threshold, remove the filters that :func:`~convsight.analysis.compression.redundant_filters`
marks as near-copies, and as many of the smallest-L1 filters and of random filters; measure test
accuracy with no retraining and after one short fine-tuning epoch (the removed filters stay
removed). Writes ``compression.json`` and ``compression.png`` (accuracy against filters kept).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from convsight.analysis.compression import (
    STRATEGIES,
    filter_norms,
    filters_removed,
    random_filters,
    redundant_filters,
    removal_points,
    smallest_l1,
)
from convsight.analysis.filters import filter_redundancy
from convsight.errors import ConvsightError
from convsight.layers import conv_layer_names
from convsight.models import Model
from convsight.paths import require_folder
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, write_figure, write_json
from convsight.report.notebook import Tile, figure_tile
from convsight.report.plots import compression_curves
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.results import Result
from convsight.studies.training import loader_size
from convsight.train import check_lr, evaluate, fit

THRESHOLDS = (0.95, 0.9, 0.85, 0.8)
RANDOM_REPEATS = 3  # random removals per point
BATCH_SIZE = 128
ALL = "all conv layers"
Removal = dict[str, list[int]]  # conv layer -> filters removed


@dataclass(frozen=True)
class CompressionData:
    """The test loader, a maker of identically seeded fine-tuning loaders (None: no
    fine-tuning) and what the data is."""

    test: DataLoader
    train: Callable[[], DataLoader] | None
    name: str
    finetune_images: int


@dataclass
class Trial:
    """One removal: where (a conv layer, or ``ALL``), how chosen, at which thresholds, and
    the test accuracy with no retraining and after fine-tuning."""

    scope: str
    strategy: str
    thresholds: list[float]
    repeat: int
    removed: Removal
    kept: int
    total: int
    accuracy: float | None = None
    finetuned: float | None = None


def _mnist_data(model: Model, data: Path, batch_size: int, images: int, seed: int):
    from convsight.data import mnist_loaders

    if model.card.channels != 1 or model.card.num_classes not in (None, 10):
        raise ConvsightError(
            f"{data} has no train/ and test/ folders and the model is not an MNIST model; "
            "give --data a folder made by `convsight data subset`"
        )
    train, test = mnist_loaders(model.card, data, batch_size, max(images, 1), None, seed)

    def make_train() -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(train.dataset, batch_size, shuffle=True, generator=generator)

    return test, make_train, "MNIST test set"


def _folder_data(model: Model, data: Path, batch_size: int, images: int, seed: int):
    """The test split of a subset folder, and a seeded pick of ``images`` of its train split,
    each decoded a batch at a time (:class:`~convsight.data.folder.FolderImages`)."""
    from convsight.studies.five_class import folder_loader, read_splits, subset_classes

    classes = subset_classes(data)
    if model.card.labels != classes:
        raise ConvsightError(
            f"the model's classes {model.card.labels} are not the class folders of {data} "
            f"({classes})"
        )
    train, test = read_splits(data, model.card, classes)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    picked = Subset(train, pick[: max(images, 1)].tolist())

    def make_train() -> DataLoader:
        return folder_loader(picked, model.card, batch_size, True, seed)

    test_loader = folder_loader(test, model.card, batch_size, False, seed)
    return test_loader, make_train, f"{data.name}/test"


def compression_data(
    model: Model,
    data: str | os.PathLike,
    batch_size: int,
    finetune_images: int,
    seed: int,
    test_images: int | None = None,
) -> CompressionData:
    """The data of ``model``: a subset folder (``train/``, ``test/``; the classes must be the
    model's), else an MNIST folder for a one-channel, ten-class model. ``test_images``: score
    on the first that many test images only (None: all)."""
    data = require_folder(data, "--data folder")
    subset = (data / "train").is_dir() or (data / "test").is_dir()
    make = _folder_data if subset else _mnist_data
    test, make_train, name = make(model, data, batch_size, finetune_images, seed)
    if test_images is not None and test_images < len(test.dataset):
        first = Subset(test.dataset, range(test_images))
        test = DataLoader(first, batch_size, shuffle=False, collate_fn=test.collate_fn)
    images = len(make_train().dataset) if finetune_images else 0
    name = f"{name} ({len(test.dataset)} images)"
    return CompressionData(test, make_train if finetune_images else None, name, images)


def _removals(layers, redundancy, norms, threshold: float, repeats: int, seed: int):
    """Each strategy's removals at ``threshold``: the same number of filters per layer."""
    redundant = {
        layer: redundant_filters(redundancy[layer], norms[layer], threshold) for layer in layers
    }
    count = {layer: len(redundant[layer]) for layer in layers}
    l1 = {layer: smallest_l1(norms[layer], count[layer]) for layer in layers}
    drawn = [
        {
            layer: random_filters(len(norms[layer]), count[layer], seed + 1000 * r + i)
            for i, layer in enumerate(layers)
        }
        for r in range(repeats)
    ]
    return {"redundant": [redundant], "l1": [l1], "random": drawn}


def plan_trials(
    layers: Sequence[str],
    redundancy: dict,
    norms: dict[str, torch.Tensor],
    thresholds: Sequence[float],
    repeats: int,
    seed: int,
) -> list[Trial]:
    """The trials of every scope (each layer, then all layers when there are several): one
    per strategy and repeat at each threshold that removes a new number of filters."""
    trials: list[Trial] = []
    scopes = [(layer, [layer]) for layer in layers] + ([(ALL, list(layers))] * (len(layers) > 1))
    for scope, members in scopes:
        total = sum(len(norms[layer]) for layer in members)
        seen: dict[tuple[int, ...], list[Trial]] = {}
        for t in sorted(thresholds, reverse=True):
            chosen = _removals(members, redundancy, norms, t, repeats, seed)
            key = tuple(len(v) for v in chosen["redundant"][0].values())
            if key in seen:  # nested groups: the same count is the same removal
                for trial in seen[key]:
                    trial.thresholds.append(t)
                continue
            if sum(key) == 0 or (scope == ALL and sum(n > 0 for n in key) < 2):
                continue  # nothing removed, or all layers' removal is one layer's own
            seen[key] = [
                Trial(scope, strategy, [t], r, removed, total - sum(key), total)
                for strategy in STRATEGIES
                for r, removed in enumerate(chosen[strategy])
            ]
            trials.extend(seen[key])
    return trials


@dataclass
class _Runner:
    """Scores a removal: accuracy as it is, and after one fine-tuning epoch on a copy.
    ``points``: where each conv layer's filters are removed (found once, for every trial)."""

    model: Model
    data: CompressionData
    lr: float
    seed: int
    device: torch.device
    points: dict[str, str]

    def accuracy(self, removed: Removal) -> float:
        module = self.model.module
        with filters_removed(module, removed, points=self.points):
            accuracy = evaluate(module.to(self.device), self.data.test, self.device)[1]
        module.cpu()
        return accuracy

    def score(self, trials: Sequence[Trial], show_progress: bool) -> float:
        """Score every trial (in place); return the accuracy with all filters."""
        with progress_bar(show_progress) as bar:
            task = bar.add_task("removals", total=len(trials), status="")
            for trial in trials:
                trial.accuracy = self.accuracy(trial.removed)
                trial.finetuned = self.finetuned(trial.removed)
                bar.update(task, advance=1, status=f"{trial.scope} {trial.strategy}")
        return self.accuracy({})

    def finetuned(self, removed: Removal) -> float | None:
        if self.data.train is None:
            return None
        module = copy.deepcopy(self.model.module)
        seed_everything(self.seed)
        with filters_removed(module, removed, points=self.points):
            history = fit(module, self.data.train(), self.data.test, 1, self.lr, self.device, False)
        return history[-1].test_accuracy


def _removal_points(model: Model) -> dict[str, str]:
    """Where each conv layer's filters are removed; fails when there is none, or a layer is
    not in a sequential block."""
    layers = conv_layer_names(model.module)
    if not layers:
        raise ConvsightError("the model has no Conv2d layer to remove filters from")
    return removal_points(model.module, layers, model.example_input())


def _layer_rows(points, norms, redundancy, thresholds) -> dict[str, dict[str, Any]]:
    """Per conv layer: its filters, where they are removed, the groups at each threshold."""
    return {
        layer: {
            "filters": len(norms[layer]),
            "removed_at": point,
            "groups": {str(t): redundancy[layer].remaining(t) for t in thresholds},
        }
        for layer, point in points.items()
    }


def _check_request(
    thresholds: Sequence[float], repeats: int, images: int, batch: int, test: int | None
) -> None:
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise ConvsightError(f"--thresholds must be in (0, 1], not {list(thresholds)}")
    if repeats < 1 or images < 0 or batch < 1:
        raise ConvsightError(
            "--random-repeats and --batch-size must be at least 1, --finetune-images at least 0"
        )
    if test is not None and test < 1:
        raise ConvsightError(f"--test-images must be at least 1, not {test}")


def check_compression(
    model: Model,
    data: str | os.PathLike,
    finetune_images: int = 10000,
    test_images: int | None = None,
    seed: int = 0,
) -> None:
    """What :func:`compress` would refuse, refused now in one sentence (the data is read)."""
    _check_request(THRESHOLDS, RANDOM_REPEATS, finetune_images, BATCH_SIZE, test_images)
    _removal_points(model)
    compression_data(model, data, BATCH_SIZE, 0, seed, test_images=1)


@dataclass(frozen=True)
class CompressionRequest:
    """The trials :func:`compress` runs: the labelled data (a subset folder, or an MNIST
    folder for an MNIST model), the similarity thresholds, random removals per point, the
    fine-tuning images (0: none), the test images (None: all), Adam's learning rate, the
    batch size, the output folder (None: nothing written; ``result.save(folder)`` writes),
    the seed and the device. Checked when made."""

    data: str | os.PathLike
    out: str | os.PathLike | None = "runs/compress"
    thresholds: Sequence[float] = THRESHOLDS
    random_repeats: int = RANDOM_REPEATS
    finetune_images: int = 10000
    test_images: int | None = None
    lr: float = 1e-3
    batch_size: int = BATCH_SIZE
    seed: int = 0
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        """One sentence for a threshold, count or learning rate that cannot work."""
        _check_request(
            self.thresholds, self.random_repeats, self.finetune_images, self.batch_size,
            self.test_images,
        )  # fmt: skip
        check_lr(self.lr)


@dataclass(kw_only=True)
class CompressionResult(Result):
    """The trials run: the model, the data, the accuracy with every filter, the settings,
    each conv layer's filters and near-copy groups, every :class:`Trial` and the summary rows
    (:func:`summary_rows`); ``files``: ``compression.json`` and ``compression.png``."""

    model: str
    data: str
    baseline_accuracy: float
    settings: dict[str, Any]
    layers: dict[str, dict[str, Any]]
    trials: list[Trial]
    summary: list[dict[str, Any]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """What ``compression.json`` holds."""
        head = {"model": self.model, "data": self.data, "baseline_accuracy": self.baseline_accuracy}
        rows = [asdict(t) for t in self.trials]
        return {**head, "settings": self.settings, "layers": self.layers, "trials": rows} | {
            "summary": self.summary,
            "seconds": self.seconds,
        }

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write ``compression.json`` and ``compression.png`` into ``out``."""
        out = prepare_out_dir(out)
        data = self.to_json()
        self.files = [
            write_json(out / "compression.json", data),
            write_figure(out / "compression.png", compression_curves(data)),
        ]
        return self.files

    def tiles(self) -> list[Tile]:
        """Test accuracy against the filters kept, per scope and strategy."""
        return [figure_tile(compression_curves(self.to_json()), "accuracy against filters kept")]

    def facts(self) -> list[tuple[str, Any]]:
        """The model, the data, the accuracy with every filter, the trials and the time."""
        return [
            ("model", self.model),
            ("data", self.data),
            ("accuracy, all filters", f"{self.baseline_accuracy:.4f}"),
            ("removals scored", len(self.trials)),
            ("conv layers", len(self.layers)),
            ("seconds", f"{self.seconds:.1f}"),
        ]


def compress(model: Model, request: CompressionRequest) -> CompressionResult:
    """Run the trials (see the module docstring) on ``model``'s conv layers; write
    ``compression.json`` and ``compression.png`` into ``request.out`` (None: nothing written).
    Every input is checked (the data read) before the folder is created."""
    r = request
    module = model.module.eval()
    points = _removal_points(model)
    layers = list(points)
    data_ = compression_data(model, r.data, r.batch_size, r.finetune_images, r.seed, r.test_images)
    out = prepare_out_dir(r.out) if r.out is not None else None
    seed_everything(r.seed)
    start = time.perf_counter()
    redundancy = {layer: filter_redundancy(module, layer) for layer in layers}
    norms = {layer: filter_norms(module, layer) for layer in layers}
    trials = plan_trials(layers, redundancy, norms, r.thresholds, r.random_repeats, r.seed)
    runner = _Runner(model, data_, r.lr, r.seed, resolve_device(r.device), points)
    baseline = runner.score(trials, r.show_progress)
    settings = {
        **{"thresholds": sorted(r.thresholds, reverse=True), "random_repeats": r.random_repeats},
        "finetune_images": data_.finetune_images,
        "test_images": loader_size(data_.test),
        "finetune_epochs": 1 if data_.train is not None else 0,
        **{"lr": r.lr, "batch_size": r.batch_size, "seed": r.seed},
        "similarity": "Pearson r, best over 8 rotations/flips (and 6 colour orders for RGB)",
        "removal": "channel zeroed where the next channel-mixing layer reads it",
    }
    result = CompressionResult(
        model=model.card.name,
        data=data_.name,
        baseline_accuracy=baseline,
        settings=settings,
        layers=_layer_rows(points, norms, redundancy, r.thresholds),
        trials=trials,
        summary=summary_rows([asdict(t) for t in trials]),
        seconds=time.perf_counter() - start,
    )
    if out is not None:
        result.save(out)
    return result


def summary_rows(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scope and removal: filters kept, and each strategy's accuracy with no
    retraining and after fine-tuning (random: the mean over its repeats)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for t in trials:
        row = rows.setdefault(
            (t["scope"], t["kept"]),
            {
                "scope": t["scope"],
                "thresholds": t["thresholds"],
                "kept": t["kept"],
                "total": t["total"],
            },
        )
        for key in ("accuracy", "finetuned"):
            row.setdefault(f"{t['strategy']}_{key}", []).append(t[key])
    for row in rows.values():
        for key, values in list(row.items()):
            if key.endswith(("_accuracy", "_finetuned")):
                known = [v for v in values if v is not None]
                row[key] = sum(known) / len(known) if known else None
    return list(rows.values())
