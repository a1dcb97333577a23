"""Image folders: build a reproducible train/test subset, load a split as tensors or read it
a batch at a time."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from convsight.data.images import (
    IMAGE_SUFFIXES,
    image_header_problem,
    load_image,
    to_model_pixels,
)
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


class FolderImages(Dataset):
    """The images of an ImageFolder split (``folder/<class>/<image>``) shaped for ``card``,
    each decoded when it is asked for: item ``i`` is ``(pixels, label)``, C x H x W uint8
    (resized and centre-cropped, as :func:`load_folder` holds them) and a 0-d label. Nothing
    decoded is kept, so memory holds a batch, not the split.

    ``check`` (the default): files whose header already says they cannot be used
    (:func:`~convsight.data.images.image_header_problem`) are left out now and listed in
    ``skipped``, and a split left with no image fails in one sentence; no pixel is decoded.
    A file that passes but cannot be decoded fails when its item is asked for."""

    def __init__(
        self,
        folder: str | os.PathLike,
        card: ModelCard,
        classes: Sequence[str] | None = None,
        check: bool = True,
    ) -> None:
        self.folder = require_folder(folder, "data folder")
        dirs = class_folders(self.folder)
        self.classes = list(classes) if classes is not None else [d.name for d in dirs]
        by_name = {d.name: d for d in dirs}
        unknown = [n for n in self.classes if n not in by_name]
        if unknown:
            raise ConvsightError(f"class folder(s) {', '.join(unknown)} missing in {self.folder}")
        items = [
            (p, i)
            for i, n in enumerate(self.classes)
            for p in sorted(by_name[n].iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not items:
            raise ConvsightError(f"no images in {self.folder}")
        self.card, self.listed = card, len(items)
        self.skipped: list[dict[str, str]] = []
        if check:
            problems = [image_header_problem(p, card) for p, _ in items]
            self.skipped = [
                {"path": str(p), "reason": r}
                for (p, _), r in zip(items, problems, strict=True)
                if r
            ]
            items = [item for item, problem in zip(items, problems, strict=True) if not problem]
            self.require_some(len(items))
        self.paths = [p for p, _ in items]
        self.labels = torch.tensor([i for _, i in items], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def require_some(self, kept: int) -> None:
        """Fail in one sentence when ``kept`` (the images usable) is none."""
        if not kept:
            raise ConvsightError(
                f"none of the {self.listed} images in {self.folder} can be used "
                f"(e.g. {self.skipped[0]['reason']})"
            )

    def decode(self, index: int) -> torch.Tensor:
        """Image ``index``'s pixels (C x H x W uint8), decoded now; an unusable file raises
        :class:`ConvsightError` with the reason."""
        path = self.paths[index]
        image = to_model_pixels(load_image(path), self.card, str(path))
        return image.mul(255).round().byte()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            pixels = self.decode(index)
        except ConvsightError as exc:
            raise ConvsightError(f"{exc} (found when its batch was read; remove it)") from exc
        return pixels, self.labels[index]


def load_folder(
    folder: str | os.PathLike,
    card: ModelCard,
    classes: Sequence[str] | None = None,
    show_progress: bool = False,
    max_bytes: int = 6 * 2**30,
) -> FolderData:
    """Every image of an ImageFolder split, shaped for ``card`` (resize + centre crop), held
    at once (:class:`FolderImages` decodes them one at a time instead).

    A file that cannot be used (unreadable, corrupt, too large, wrong size for the card) is
    left out and listed in ``FolderData.skipped`` with the reason; only a split with no usable
    image at all is an error.
    """
    images = FolderImages(folder, card, classes, check=False)
    h, w = card.input_size
    need = len(images) * card.channels * h * w
    if need > max_bytes:
        raise ConvsightError(
            f"{len(images)} images at {w}x{h} need {need / 2**30:.1f} GiB; "
            "use a smaller --image-size"
        )
    pixels = torch.empty(len(images), card.channels, h, w, dtype=torch.uint8)
    kept: list[int] = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"loading {images.folder.name}", total=len(images), status="")
        for index, path in enumerate(images.paths):
            bar.update(task, advance=1)
            try:
                pixels[len(kept)] = images.decode(index)
            except ConvsightError as exc:
                images.skipped.append({"path": str(path), "reason": str(exc)})
                continue
            kept.append(index)
    images.require_some(len(kept))
    if len(kept) < len(images):
        pixels = pixels[: len(kept)].clone()
    paths = [images.paths[i] for i in kept]
    return FolderData(pixels, images.labels[kept], images.classes, paths, images.skipped)


def class_means(data: FolderData) -> torch.Tensor:
    """The mean image of every class in pixel space (K x C x H x W in [0, 1])."""
    k = len(data.classes)
    sums = torch.zeros(k, *data.pixels.shape[1:], dtype=torch.float64)
    sums.index_add_(0, data.labels, data.pixels.double() / 255)
    counts = torch.bincount(data.labels, minlength=k).clamp(min=1).double()
    return (sums / counts.view(-1, 1, 1, 1)).float()
