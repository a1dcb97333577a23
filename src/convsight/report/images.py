"""Pixel tensors to PNG files and small composites (PIL, no matplotlib: fast per channel)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from PIL.Image import Resampling

from convsight.report.files import atomic_path


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """One image C x H x W in [0, 1] (clipped) as a PIL image."""
    array = pixels.detach().float().cpu().clamp(0, 1).mul(255).round().byte()
    if array.shape[0] == 1:
        return Image.fromarray(array[0].numpy(), "L")
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()), "RGB")


def write_image(
    path: str | os.PathLike,
    pixels: torch.Tensor,
    min_side: int = 0,
    within: str | os.PathLike | None = None,
) -> Path:
    """Save one image as PNG, enlarged (nearest neighbour) to at least ``min_side`` pixels.

    ``within``: the output folder the path must stay inside (see :func:`atomic_path`).
    """
    img = enlarged(to_pil(pixels), min_side)
    with atomic_path(path, within) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def enlarged(img: Image.Image, min_side: int) -> Image.Image:
    """``img`` enlarged by a whole factor (nearest neighbour) to at least ``min_side`` pixels."""
    if not min_side or min(img.size) >= min_side:
        return img
    factor = -(-min_side // min(img.size))
    return img.resize((img.width * factor, img.height * factor), Resampling.NEAREST)


def write_gif(
    path: str | os.PathLike,
    frames: torch.Tensor,
    min_side: int = 0,
    within: str | os.PathLike | None = None,
    ms: int = 120,
) -> Path:
    """The frames (T x C x H x W) there and back as a looping GIF, enlarged as
    :func:`write_image` does, written atomically."""
    images = [enlarged(to_pil(frame), min_side) for frame in frames]
    loop = images + images[-2:0:-1]
    with atomic_path(path, within) as tmp:
        loop[0].save(tmp, format="GIF", save_all=True, append_images=loop[1:], duration=ms, loop=0)
    return Path(path)


def examples_strip(
    images: Sequence[torch.Tensor],
    boxes: Sequence[tuple[int, int, int, int]],
    tile: int = 112,
) -> Image.Image:
    """Top row: each image with its box drawn; bottom row: the box's patch, enlarged."""
    strip = Image.new("RGB", (tile * len(images) + 4 * (len(images) - 1), 2 * tile + 4), "white")
    for i, (pixels, (top, left, bottom, right)) in enumerate(zip(images, boxes, strict=True)):
        full = to_pil(pixels).convert("RGB")
        sx, sy = tile / full.width, tile / full.height
        thumb = full.resize((tile, tile), Resampling.BILINEAR)
        ImageDraw.Draw(thumb).rectangle(
            [left * sx, top * sy, max(right * sx - 1, left * sx), max(bottom * sy - 1, top * sy)],
            outline=(255, 30, 30),
            width=2,
        )
        patch = full.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
        resample = Resampling.NEAREST if max(patch.size) < tile // 2 else Resampling.BILINEAR
        x = i * (tile + 4)
        strip.paste(thumb, (x, 0))
        strip.paste(patch.resize((tile, tile), resample), (x, tile + 4))
    return strip


def write_pil(
    path: str | os.PathLike, img: Image.Image, within: str | os.PathLike | None = None
) -> Path:
    """Save a PIL image as PNG atomically (inside ``within`` when given)."""
    with atomic_path(path, within) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
