"""How a result shows itself in a notebook: an inline HTML grid of images with captions and
a small table of facts (``_repr_html_``), or the same grid as a matplotlib figure (``show``).

Images are embedded as PNG data URIs, each scaled to at most :data:`THUMBNAIL` pixels a side
(small ones enlarged, nearest neighbour); at most :data:`MAX_TILES` are shown, with a line
saying how many were left out, so a big batch stays a small page. Every caption and fact is
escaped: labels come from model cards and file names, which are data, not markup.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from PIL.Image import Resampling

MAX_TILES = 48
"""The most images a result shows inline."""
THUMBNAIL = 160
"""The longest side, in pixels, of an image shown inline."""
MAX_FACTS = 16
"""The most rows of the facts table."""
MAX_TEXT = 120
"""The longest caption or fact shown, in characters."""


@dataclass(frozen=True)
class Tile:
    """One picture of a result with its caption: ``image`` is C x H x W or H x W in [0, 1]
    (a tensor or an array), or H x W x 3 uint8."""

    image: Any
    caption: str = ""


def tile_pil(image: Any) -> Image.Image:
    """A tile's image as a PIL image, scaled to at most :data:`THUMBNAIL` a side (a small
    image is enlarged by a whole factor, nearest neighbour, so its pixels stay sharp)."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else image
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if array.ndim == 3 and array.shape[0] in (1, 3):  # C x H x W
            array = array.transpose(1, 2, 0)
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(array))
    side = max(img.size)
    if side > THUMBNAIL:
        scale = THUMBNAIL / side
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(size, Resampling.BILINEAR)
    factor = max(1, THUMBNAIL // side // 2)
    return img.resize((img.width * factor, img.height * factor), Resampling.NEAREST)


def figure_tile(figure: Figure, caption: str = "", dpi: int = 100) -> Tile:
    """A matplotlib figure as a tile: drawn to a PNG in memory (as the files are written),
    read back as H x W x 3 uint8; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return Tile(np.asarray(img.convert("RGB")), caption)


def file_tile(path: str | os.PathLike, caption: str = "") -> Tile | None:
    """An image file (PNG, JPEG, ...) as a tile, shrunk to at most twice
    :data:`THUMBNAIL` a side as it is read; None when it cannot be read (gone, damaged)."""
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (2 * THUMBNAIL, 2 * THUMBNAIL))  # JPEG: decode small
            img = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    img.thumbnail((2 * THUMBNAIL, 2 * THUMBNAIL))
    return Tile(np.asarray(img), caption)


def data_uri(image: Any) -> str:
    """A tile's image as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    tile_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(text: Any) -> str:
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def result_html(
    title: str, facts: Sequence[tuple[str, Any]], tiles: Sequence[Tile], columns: int = 8
) -> str:
    """The inline view: a title, a table of facts, then a grid of captioned images."""
    parts = [f"<div class='convsight-result'><b>{html.escape(_short(title))}</b>"]
    if facts:
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(_short(key))}</td>"
            f"<td style='text-align:left'>{html.escape(_short(value))}</td></tr>"
            for key, value in list(facts)[:MAX_FACTS]
        )
        parts.append(f"<table>{rows}</table>")
    shown = list(tiles)[:MAX_TILES]
    if shown:
        cells = "".join(
            "<figure style='margin:2px;display:inline-block;text-align:center'>"
            f"<img src='{data_uri(tile.image)}' style='image-rendering:pixelated' "
            f"alt='{html.escape(_short(tile.caption), quote=True)}'/>"
            f"<figcaption style='font-size:smaller;max-width:{THUMBNAIL}px'>"
            f"{html.escape(_short(tile.caption))}</figcaption></figure>"
            for tile in shown
        )
        parts.append(f"<div style='display:flex;flex-wrap:wrap;max-width:{columns * 170}px'>")
        parts.append(cells + "</div>")
    if len(tiles) > len(shown):
        parts.append(f"<p>{len(tiles) - len(shown)} more not shown (see .save(folder))</p>")
    parts.append("</div>")
    return "".join(parts)


def tiles_figure(
    title: str, tiles: Sequence[Tile], columns: int = 8, pyplot: bool = False
) -> Figure:
    """The tiles as one matplotlib figure (at most :data:`MAX_TILES`), captions as titles;
    ``pyplot``: made by pyplot, so that ``plt.show()`` opens it in a window."""
    shown = list(tiles)[:MAX_TILES]
    cols = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    size = (1.8 * cols, 1.9 * rows + 0.4)
    if pyplot:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size, layout="constrained")
    else:
        figure = Figure(figsize=size, layout="constrained")
    figure.suptitle(_short(title))
    for i, tile in enumerate(shown):
        ax = figure.add_subplot(rows, cols, i + 1)
        img = tile_pil(tile.image)
        ax.imshow(img, cmap="gray" if img.mode == "L" else None, interpolation="nearest")
        ax.set_title(_short(tile.caption)[:40], fontsize=7)
        ax.axis("off")
    return figure


def in_notebook() -> bool:
    """Whether this runs in an IPython kernel (Jupyter, VS Code, Colab)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show_tiles(title: str, tiles: Sequence[Tile], columns: int = 8) -> None:
    """Show the tiles: inline in a notebook, else in a matplotlib window (``plt.show()``)."""
    if in_notebook():  # a PNG: shown whatever matplotlib backend the kernel has
        from IPython.display import Image as Picture
        from IPython.display import display

        buffer = io.BytesIO()
        tiles_figure(title, tiles, columns).savefig(buffer, format="png", dpi=100)
        display(Picture(data=buffer.getvalue(), format="png"))
        return
    import matplotlib.pyplot as plt

    tiles_figure(title, tiles, columns, pyplot=True)
    plt.show()
