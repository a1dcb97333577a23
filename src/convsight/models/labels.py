"""Class names: ImageNet's 1000, and labels files (a JSON list or one name per line)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from convsight.errors import ConvsightError
from convsight.paths import require_file

MAX_LABELS_BYTES = 16 * 2**20


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (sorted synsets)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a file: a JSON list, or one name per line (blank lines skipped).

    ``imagenet`` (not a file of that name) stands for the 1000 ImageNet class names.
    """
    if str(path) == "imagenet" and not Path(path).exists():
        return imagenet_labels()
    path = require_file(path, "labels file")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ConvsightError(
            f"labels file {path} is larger than {MAX_LABELS_BYTES // 2**20} MiB; "
            "it should hold class names only"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvsightError(f"cannot read labels file {path}: {exc}") from exc
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConvsightError(f"labels file {path} is not a valid JSON list: {exc}") from exc
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise ConvsightError(f"labels file {path} must be a JSON list of class names")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConvsightError(f"labels file {path} names no classes")
    return labels
