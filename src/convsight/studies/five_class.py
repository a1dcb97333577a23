"""The study's part 4: an image subset, the self-built CNN and a fine-tuned backbone."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from convsight.data.folder import (
    FolderData,
    class_folders,
    class_means,
    load_folder,
    scan_folder,
    scan_imagenet,
    split_files,
)
from convsight.data.mnist import load_mnist
from convsight.errors import ConvsightError
from convsight.models import ModelCard, build_seed, load_model, replace_head
from convsight.models.seed_source import SEEDS
from convsight.models.torchvision_source import torchvision_card, torchvision_models
from convsight.report import (
    atomic_path,
    out_dir_kept_if_written,
    prepare_out_dir,
    safe_filename,
    training_curves,
    unique_names,
    write_checkpoint,
    write_figure,
    write_json,
    write_npz,
)
from convsight.report.grids import image_grid
from convsight.report.plots import confusion_matrix
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.numbers import STUDY
from convsight.train import check_lr, evaluate, fit

FASHION_CLASSES = [
    "T-shirt-top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_DEFAULT = ["Trouser", "Pullover", "Sandal", "Bag", "Ankle boot"]


def _check_out_is_new(out: Path) -> None:
    for sub in ("train", "test", "manifest.json"):
        if (out / sub).exists():
            raise ConvsightError(f"{out} already holds a subset ({sub}); choose a new --out")


def make_subset(
    out: Path,
    imagenet_root: str | os.PathLike | None = None,
    synsets: list[str] | None = None,
    from_folder: str | os.PathLike | None = None,
    from_fashion_mnist: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    per_class: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/train/<class>/``, ``out/test/<class>/`` and ``out/manifest.json``.

    Sources: an ImageNet train tree (default: the study's five synsets), any ImageFolder
    tree, or the Fashion-MNIST idx files. Unreadable files and absent or empty classes are
    reported in the manifest and left out; the split is seeded and reproducible.
    """
    _check_subset_request(
        (imagenet_root, from_folder, from_fashion_mnist), test_fraction, per_class
    )
    out = Path(out)
    _check_out_is_new(out)
    if from_fashion_mnist is not None:
        return _fashion_subset(
            out, Path(from_fashion_mnist), classes, per_class or 578, test_fraction, seed
        )
    scan, source = _scan_source(imagenet_root, synsets, from_folder, classes, show_progress)
    if len(scan.files) < 2:
        raise ConvsightError(
            f"fewer than two usable classes in {source}: " + "; ".join(scan.missing or ["none"])
        )
    files = _sample(scan.files, per_class, seed) if per_class is not None else scan.files
    splits = split_files(files, test_fraction, seed)
    class_dirs(splits["train"])
    out = prepare_out_dir(out)
    entries = _write_splits(
        out, splits, lambda path: path.name, str, lambda path, tmp: shutil.copyfile(path, tmp)
    )
    return _write_manifest(
        out,
        source,
        splits,
        entries,
        scan.skipped,
        scan.missing,
        {"synsets": synsets, "per_class": per_class, "test_fraction": test_fraction, "seed": seed},
    )


def _check_subset_request(sources: tuple, test_fraction: float, per_class: int | None) -> None:
    if sum(source is not None for source in sources) != 1:
        raise ConvsightError(
            "give exactly one source: --imagenet-root, --from-folder or --from-fashion-mnist"
        )
    if not 0 < test_fraction < 1:
        raise ConvsightError(
            f"--test-fraction must be between 0 and 1 (exclusive), not {test_fraction}"
        )
    if per_class is not None and per_class < 2:
        raise ConvsightError("--per-class must be at least 2")


def _scan_source(imagenet_root, synsets, from_folder, classes, show_progress: bool):
    """The readable files of each class in an ImageNet tree or an image folder, and a name
    for the source; classes asked for but absent are recorded as missing."""
    if imagenet_root is not None:
        scan = scan_imagenet(imagenet_root, synsets, show_progress=show_progress)
        return scan, f"ImageNet train tree {imagenet_root}"
    scan = scan_folder(from_folder, show_progress=show_progress)
    if classes:
        unknown = [c for c in classes if c not in scan.files and c not in scan.missing]
        if unknown:
            scan.missing += [f"class '{c}' not found" for c in unknown]
        scan.files = {c: f for c, f in scan.files.items() if c in classes}
    return scan, f"image folder {from_folder}"


def _fashion_subset(
    out: Path,
    folder: Path,
    classes: list[str] | None,
    per_class: int,
    test_fraction: float,
    seed: int,
) -> dict[str, Any]:
    classes = classes or FASHION_DEFAULT
    lowered = [c.lower() for c in FASHION_CLASSES]
    unknown = [c for c in classes if c.lower() not in lowered]
    if unknown:
        raise ConvsightError(
            f"unknown Fashion-MNIST class(es) {', '.join(unknown)}; "
            f"classes: {', '.join(FASHION_CLASSES)}"
        )
    images, labels = load_mnist("train", folder)
    by_class = {}
    for name in classes:
        label = lowered.index(name.lower())
        by_class[FASHION_CLASSES[label]] = (labels == label).nonzero().flatten().tolist()
    splits = split_files(_sample(by_class, per_class, seed), test_fraction, seed)
    out = prepare_out_dir(out)
    from PIL import Image

    entries = _write_splits(
        out,
        splits,
        lambda index: f"{index:05d}.png",
        lambda index: f"fashion-mnist train[{index}]",
        lambda index, tmp: Image.fromarray(images[index].numpy()).save(tmp, format="PNG"),
    )
    settings = {
        "classes": classes,
        "per_class": per_class,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    return _write_manifest(
        out, f"Fashion-MNIST idx files in {folder}", splits, entries, [], [], settings
    )


def _sample(items: dict[str, list], per_class: int, seed: int) -> dict[str, list]:
    """At most ``per_class`` items of each class, a seeded choice."""
    return {
        c: sorted(random.Random(f"{seed}:{c}").sample(v, min(per_class, len(v))))
        for c, v in items.items()
    }


def class_dirs(classes: Iterable[str]) -> dict[str, str]:
    """The folder of each class: its name made safe (spaces and common punctuation kept, so
    the folder name is the label training reads back). Two classes that would share a folder
    are an input error."""
    dirs: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in classes:
        folder = safe_filename(name, max_length=200, readable=True)
        other = seen.setdefault(folder.casefold(), name)
        if other != name:
            raise ConvsightError(
                f"classes '{other}' and '{name}' would share the folder '{folder}'; rename one"
            )
        dirs[name] = folder
    return dirs


def _write_splits(out: Path, splits, file_name, source, write) -> list[dict[str, str]]:
    """Write every item to ``out/<split>/<class>/<file_name(item)>`` whole (both names made
    safe, file names distinct within a folder); the manifest rows."""
    entries = []
    dirs = class_dirs(splits["train"])
    for split, by_class in splits.items():
        for name, items in by_class.items():
            names = unique_names(
                [file_name(item) for item in items], max_length=200, readable=True, extension=True
            )
            for item, file in zip(items, names, strict=True):
                dest = out / split / dirs[name] / file
                with atomic_path(dest, within=out) as tmp:
                    write(item, tmp)
                entries.append(
                    {"split": split, "class": name, "source": source(item), "path": str(dest)}
                )
    return entries


def _write_manifest(out, source, splits, entries, skipped, missing, settings) -> dict[str, Any]:
    counts = {
        name: {split: len(splits[split].get(name, [])) for split in splits}
        for name in splits["train"]
    }
    manifest = {
        "source": source,
        "classes": sorted(counts),
        "counts": counts,
        "settings": settings,
        "skipped": skipped,
        "missing": missing,
        "files": entries,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def folder_loader(data: FolderData, card: ModelCard, batch_size: int, train: bool, seed: int):
    """Normalized batches of ``data`` for ``card``; a training loader shuffles and flips at
    random (both seeded by ``seed``)."""
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
        TensorDataset(data.pixels, data.labels),
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )


def _build(
    model: str, classes: list[str], image_size: int, finetune: bool, weights: Path | None
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
        backbone = load_model(model, weights) if weights else None
        import torchvision.models as tvm

        module = backbone.module if backbone else tvm.get_model(model, weights=None)
        base = backbone.card if backbone else torchvision_card(model)
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


def _write_class_means(out: Path, train_data: FolderData, classes: list[str]) -> None:
    means = class_means(train_data)
    write_npz(out / "class_means.npz", means=means, labels=classes)
    write_figure(out / "class_means.png", image_grid(means, classes, title="class means (train)"))


def train_subset(
    data: str | os.PathLike,
    out: Path,
    model: str = "five-class-cnn",
    finetune: bool = False,
    weights: str | os.PathLike | None = None,
    image_size: int = 224,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train on ``data/train``, test on ``data/test``; write checkpoint + card, metrics.json,
    training curves, confusion matrix, per-class accuracy and the class-mean images."""
    check_lr(lr)
    data = Path(data)
    classes = subset_classes(data)
    if image_size < 16:
        raise ConvsightError("--image-size must be at least 16")
    dev = resolve_device(device)
    seed_everything(seed)
    module, card, params = _build(model, classes, image_size, finetune, weights)
    train_data, test_data = load_splits(data, card, classes, show_progress)
    test_loader = folder_loader(test_data, card, batch_size, False, seed)
    start = time.perf_counter()
    with out_dir_kept_if_written(out) as out:  # a diverged run leaves no empty folder
        train_loader = folder_loader(train_data, card, batch_size, True, seed)
        history = fit(
            module, train_loader, test_loader, epochs, lr, dev, show_progress, parameters=params
        )
    seconds = time.perf_counter() - start
    card.source += f"; convsight train subset {data}, {epochs} epochs, seed {seed}"
    result = {
        "model": model,
        "finetune": finetune,
        "weights": str(weights) if weights else None,
        "classes": classes,
        "settings": {
            "image_size": image_size,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": "Adam",
            "loss": "cross-entropy",
            "seed": seed,
            "device": str(dev),
            "train_examples": len(train_data.labels),
            "test_examples": len(test_data.labels),
        },
    }
    title = f"{card.name} on {data.name}" + (" (fine-tuned head)" if finetune else "")
    tested = evaluate(module, test_loader, dev)
    _write_run(out, module, card, (train_data, test_data), tested, history, result, title)
    result["seconds"] = seconds
    write_json(out / "metrics.json", result)
    return result


def load_splits(
    data: Path, card: ModelCard, classes: list[str], show_progress: bool
) -> tuple[FolderData, FolderData]:
    train_data = load_folder(data / "train", card, classes, show_progress)
    test_data = load_folder(data / "test", card, classes, show_progress)
    empty = [c for i, c in enumerate(classes) if not (train_data.labels == i).any()]
    if empty:
        raise ConvsightError(
            f"class(es) {', '.join(empty)} have no readable training image in {data / 'train'}"
        )
    return train_data, test_data


def _write_run(out, module, card, splits, tested, history, result, title) -> None:
    """Write the checkpoint, class means and figures; add the scores to ``result``."""
    train_data, test_data = splits
    classes = result["classes"]
    _, test_acc, predictions = tested
    matrix, per_class = _confusion(test_data.labels, predictions, classes)
    write_checkpoint(out / "model.pt", module.cpu(), card)
    _write_class_means(out, train_data, classes)
    rows = [h.to_dict() for h in history]
    result |= {
        "history": rows,
        "train_accuracy": rows[-1]["train_accuracy"],
        "test_accuracy": test_acc,
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "skipped_images": train_data.skipped + test_data.skipped,
        "study": STUDY.five_class_json(),
    }
    write_figure(out / "training_curves.png", training_curves(rows, title))
    write_figure(out / "confusion_matrix.png", confusion_matrix(matrix.tolist(), classes, title))
