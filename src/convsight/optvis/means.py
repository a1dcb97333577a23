"""Class-mean images: the study's "mean initialization" of a class model.

``class_mean_images(dataset, card)`` averages, per class, the images of a dataset shaped for
the model (resize + centre crop for photo models), in pixel space. A dataset is

* ``"mnist"`` (the MNIST training set; ``data_dir`` as for :func:`convsight.data.load_mnist`),
* an ImageFolder directory (one sub-folder per class, named by label or ImageNet synset), or
* a flat folder of ImageNet sample photos named ``<synset>_<name>.JPEG``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from convsight.data import load_image, load_mnist, to_model_pixels
from convsight.data.images import IMAGE_SUFFIXES
from convsight.errors import ConvsightError
from convsight.models import ModelCard
from convsight.paths import require_folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_of_folder(name: str, card: ModelCard) -> int | None:
    labels = [label.lower() for label in card.labels or []]
    wanted = name.replace("_", " ").lower()
    if wanted in labels:
        return labels.index(wanted)
    synset, _, rest = name.partition("_")
    if rest and rest.replace("_", " ").lower() in labels:
        return labels.index(rest.replace("_", " ").lower())
    if name.isdigit() and card.num_classes and int(name) < card.num_classes:
        return int(name)
    if synset.startswith("n") and synset[1:].isdigit() and card.num_classes == 1000:
        from convsight.data.imagenet import imagenet_class_of

        try:
            return imagenet_class_of(f"{synset}_{rest or synset}.JPEG")
        except ConvsightError:
            return None
    return None


def dataset_files(dataset: str | os.PathLike, card: ModelCard) -> dict[int, list[Path]]:
    """Image files per class index of an ImageFolder or flat ImageNet-samples folder."""
    folder = require_folder(dataset, "dataset folder")
    files: dict[int, list[Path]] = {}
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if subdirs:
        for sub in subdirs:
            index = _class_of_folder(sub.name, card)
            if index is None:
                raise ConvsightError(
                    f"folder {sub.name} of {folder} names no class of model '{card.name}'"
                )
            files.setdefault(index, []).extend(_images(sub))
    else:
        from convsight.data.imagenet import imagenet_class_of

        for path in _images(folder):
            files.setdefault(imagenet_class_of(path), []).append(path)
    files = {k: v for k, v in files.items() if v}
    if not files:
        raise ConvsightError(f"no images found in {folder}")
    return files


def class_mean_images(
    dataset: str | os.PathLike,
    card: ModelCard,
    classes: Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[int, torch.Tensor]:
    """Mean image (C x H x W, pixel space) of each class (all, or ``classes``) of ``dataset``.

    A class asked for but absent from the dataset is an input error.
    """
    wanted = None if classes is None else [int(c) for c in classes]
    if str(dataset).lower() == "mnist":
        images, labels = load_mnist("train", data_dir)
        if (card.channels, *card.input_size) != (1, 28, 28):
            raise ConvsightError(f"model '{card.name}' does not take 28x28 MNIST digits")
        means = {}
        for c in wanted if wanted is not None else sorted(set(labels.tolist())):
            mask = labels == c
            if not mask.any():
                raise ConvsightError(f"no MNIST image of class {c}")
            means[c] = images[mask].float().div(255).mean(0)[None]
        return means
    files = dataset_files(dataset, card)
    targets = wanted if wanted is not None else sorted(files)
    missing = [c for c in targets if c not in files]
    if missing:
        names = ", ".join(card.label(c) for c in missing[:5])
        raise ConvsightError(f"dataset {dataset} has no images of class(es) {names}")
    means = {}
    for c in targets:
        total = None
        for path in files[c]:
            pixels = to_model_pixels(load_image(path), card, name=str(path))
            total = pixels if total is None else total + pixels
        assert total is not None  # dataset_files keeps only classes with images
        means[c] = total / len(files[c])
    return means


def class_counts(dataset: str | os.PathLike, card: ModelCard) -> dict[int, int]:
    """How many images each class has (to say how many images a mean is made of)."""
    if str(dataset).lower() == "mnist":
        return {}
    return {k: len(v) for k, v in dataset_files(dataset, card).items()}
