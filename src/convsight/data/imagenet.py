"""ImageNet sample photos named ``<synset>_<class name>.JPEG``: their class index."""

from __future__ import annotations

import os
from pathlib import Path

from convsight.errors import ConvsightError
from convsight.models.card import imagenet_labels
from convsight.paths import require_folder


def imagenet_class_of(path: str | os.PathLike) -> int:
    """The ImageNet class index of a photo named ``<synset>_<name>.<ext>`` (torchvision order)."""
    stem = Path(path).stem
    synset, _, name = stem.partition("_")
    wanted = name.replace("_", " ").lower()
    matches = [i for i, label in enumerate(imagenet_labels()) if label.lower() == wanted]
    if not synset.startswith("n") or len(matches) != 1:
        raise ConvsightError(f"cannot tell the ImageNet class of {Path(path).name}")
    return matches[0]


def imagenet_samples(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """Every sample photo in ``folder`` (sorted by synset) with its class index."""
    folder = require_folder(folder, "sample folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in {".jpeg", ".jpg", ".png"}
    )
    if not files:
        raise ConvsightError(f"no images in {folder}")
    return [(p, imagenet_class_of(p)) for p in files]
