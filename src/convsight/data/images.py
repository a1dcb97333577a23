"""Image files in, pixel tensors ([0, 1], C x H x W) shaped for a model out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; a missing, non-image or corrupt file raises."""
    path = Path(path)
    if not path.exists():
        raise ConvsightError(f"image {path} does not exist")
    if not path.is_file():
        raise ConvsightError(f"image {path} is not a file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except UnidentifiedImageError as exc:
        raise ConvsightError(f"{path} is not an image file that can be read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConvsightError(f"image {path} is corrupt or truncated ({exc})") from exc


def _channels(img: Image.Image) -> int:
    return {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(
        img.mode, len(img.getbands())
    )


def to_model_pixels(img: Image.Image, card: ModelCard, name: str = "image") -> torch.Tensor:
    """A PIL image as the model's pixel input (C x H x W in [0, 1]).

    Models with ``card.resize`` take any photo (resize the shorter side, centre crop), with
    colour converted to the model's channel count. Models without it (e.g. the MNIST CNN)
    take only images of exactly their size and channel count.
    """
    h, w = card.input_size
    if card.resize is None:
        if (img.height, img.width) != (h, w):
            raise ConvsightError(
                f"{name} is {img.width}x{img.height} pixels; model '{card.name}' takes "
                f"exactly {w}x{h}"
            )
        if _channels(img) not in (card.channels, card.channels + 1):  # alpha is dropped
            raise ConvsightError(
                f"{name} has {_channels(img)} channels ({img.mode}); model '{card.name}' "
                f"takes {card.channels}"
            )
    else:
        scale = card.resize / min(img.width, img.height)
        size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    img = img.convert("L" if card.channels == 1 else "RGB")
    array = np.asarray(img, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_image_tensor(path: str | os.PathLike, card: ModelCard) -> torch.Tensor:
    """Load ``path`` and shape it for the model: 1 x C x H x W pixels in [0, 1]."""
    return to_model_pixels(load_image(path), card, name=str(path)).unsqueeze(0)
