"""Image folders: build a reproducible train/test subset, load a split as tensors."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convsight.data.images import IMAGE_SUFFIXES, load_image, to_model_pixels
from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.paths import require_folder
from convsight.progress import progress_bar

# The study's five classes: synset -> readable name.
STUDY_SYNSETS = {
    "n01443537": "goldfish",
    "n01518878": "ostrich",
    "n01729977": "green snake",
    "n02110185": "Siberian husky",
    "n07749582": "lemon",
}


@dataclass
class Scan:
    """What a source tree holds: files per class, and what was left out and why."""

    files: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image (None when it is)."""
    try:
        load_image(path)
    except ConvsightError as exc:
        return str(exc)
    return None


def _scan_class_dirs(dirs: dict[str, Path], check: bool, show_progress: bool) -> Scan:
    scan = Scan()
    candidates = {
        name: sorted(p for p in folder.iterdir() if p.is_file()) for name, folder in dirs.items()
    }
    total = sum(len(v) for v in candidates.values())
    with progress_bar(show_progress and check) as bar:
        task = bar.add_task("checking images", total=total, status="")
        for name, paths in candidates.items():
            good = []
            for path in paths:
                bar.update(task, advance=1)
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    scan.skipped.append({"path": str(path), "reason": "not an image file name"})
                    continue
                problem = image_problem(path) if check else None
                if problem:
                    scan.skipped.append({"path": str(path), "reason": problem})
                else:
                    good.append(path)
            if good:
                scan.files[name] = good
            else:
                scan.missing.append(f"class '{name}' has no usable images")
    return scan


def scan_imagenet(
    root: str | os.PathLike,
    synsets: Sequence[str] | None = None,
    names: dict[str, str] | None = None,
    check: bool = True,
    show_progress: bool = False,
) -> Scan:
    """Files of the chosen synsets in an ImageNet train tree (``root/train/<synset>/``).

    A synset that is absent or empty is recorded in ``missing``; unreadable files in ``skipped``.
    """
    root = require_folder(root, "ImageNet root")
    train = root / "train" if (root / "train").is_dir() else root
    synsets = list(synsets or STUDY_SYNSETS)
    names = {**STUDY_SYNSETS, **(names or {})}
    dirs, missing = {}, []
    for synset in synsets:
        folder = train / synset
        if folder.is_dir():
            dirs[names.get(synset, synset)] = folder
        else:
            missing.append(f"synset {synset} ({names.get(synset, '?')}) not found in {train}")
    scan = _scan_class_dirs(dirs, check, show_progress)
    scan.missing = missing + scan.missing
    return scan


def scan_folder(folder: str | os.PathLike, check: bool = True, show_progress: bool = False) -> Scan:
    """Files of every class of an ImageFolder-style tree (``folder/<class>/<image>``)."""
    folder = require_folder(folder, "image folder")
    dirs = {
        p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }
    if not dirs:
        raise ConvsightError(f"{folder} has no class sub-folders (expected {folder}/<class>/*.jpg)")
    return _scan_class_dirs(dirs, check, show_progress)


def split_files(
    files: dict[str, list], test_fraction: float, seed: int
) -> dict[str, dict[str, list]]:
    """Per class, a seeded shuffle, then the first ``test_fraction`` go to test (at least one)."""
    if not 0 < test_fraction < 1:
        raise ConvsightError(
            f"--test-fraction must be between 0 and 1 (exclusive), not {test_fraction}"
        )
    splits: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for name in sorted(files):
        paths = sorted(files[name])
        random.Random(f"{seed}:{name}").shuffle(paths)
        n_test = min(len(paths) - 1, max(1, round(len(paths) * test_fraction)))
        if len(paths) < 2:
            n_test = 0
        splits["test"][name] = sorted(paths[:n_test])
        splits["train"][name] = sorted(paths[n_test:])
    return splits


@dataclass
class FolderData:
    """A split loaded for training: uint8 pixels, labels, class names and the files.

    ``paths`` are the files loaded (one per row of ``pixels``); ``skipped`` the files left out,
    each ``{"path": ..., "reason": ...}`` (unreadable, corrupt, too large...).
    """

    pixels: torch.Tensor  # N x C x H x W, uint8, already resized/cropped for the card
    labels: torch.Tensor
    classes: list[str]
    paths: list[Path]
    skipped: list[dict[str, str]] = field(default_factory=list)


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(
    folder: str | os.PathLike,
    card: ModelCard,
    classes: Sequence[str] | None = None,
    show_progress: bool = False,
    max_bytes: int = 6 * 2**30,
) -> FolderData:
    """Every image of an ImageFolder split, shaped for ``card`` (resize + centre crop).

    A file that cannot be used (unreadable, corrupt, too large, wrong size for the card) is
    left out and listed in ``FolderData.skipped`` with the reason; only a split with no usable
    image at all is an error.
    """
    folder = require_folder(folder, "data folder")
    dirs = class_folders(folder)
    names = list(classes) if classes is not None else [d.name for d in dirs]
    by_name = {d.name: d for d in dirs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConvsightError(f"class folder(s) {', '.join(unknown)} missing in {folder}")
    items = [
        (p, i)
        for i, n in enumerate(names)
        for p in sorted(by_name[n].iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise ConvsightError(f"no images in {folder}")
    h, w = card.input_size
    need = len(items) * card.channels * h * w
    if need > max_bytes:
        raise ConvsightError(
            f"{len(items)} images at {w}x{h} need {need / 2**30:.1f} GiB; "
            "use a smaller --image-size"
        )
    pixels = torch.empty(len(items), card.channels, h, w, dtype=torch.uint8)
    kept: list[tuple[Path, int]] = []
    skipped: list[dict[str, str]] = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"loading {folder.name}", total=len(items), status="")
        for path, index in items:
            bar.update(task, advance=1)
            try:
                image = to_model_pixels(load_image(path), card, str(path))
            except ConvsightError as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            pixels[len(kept)] = image.mul(255).round().byte()
            kept.append((path, index))
    if not kept:
        raise ConvsightError(
            f"none of the {len(items)} images in {folder} can be used (e.g. {skipped[0]['reason']})"
        )
    if len(kept) < len(items):
        pixels = pixels[: len(kept)].clone()
    labels = torch.tensor([i for _, i in kept])
    return FolderData(pixels, labels, names, [p for p, _ in kept], skipped)


def class_means(data: FolderData) -> torch.Tensor:
    """The mean image of every class in pixel space (K x C x H x W in [0, 1])."""
    k = len(data.classes)
    sums = torch.zeros(k, *data.pixels.shape[1:], dtype=torch.float64)
    sums.index_add_(0, data.labels, data.pixels.double() / 255)
    counts = torch.bincount(data.labels, minlength=k).clamp(min=1).double()
    return (sums / counts.view(-1, 1, 1, 1)).float()
