"""Grids of feature maps and images, like the study's 8x8 figures."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine


def channel_grid(
    maps: torch.Tensor,
    title: str = "",
    columns: int = 8,
    channels: list[int] | None = None,
    cmap: str = "viridis",
) -> Figure:
    """One tile per channel of ``maps`` (C x H x W), numbered, each scaled to its own range."""
    maps = maps.detach().float().cpu()
    count = maps.shape[0]
    channels = channels if channels is not None else list(range(count))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    layout = ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    fig = Figure(figsize=(1.3 * cols, 1.3 * rows + (0.4 if title else 0)), layout=layout)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        ax.imshow(maps[i].numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(str(channels[i]), fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_grid(
    images: torch.Tensor, titles: list[str] | None = None, columns: int = 8, title: str = ""
) -> Figure:
    """Pixel-space images (N x C x H x W in [0, 1]) in a grid with optional titles."""
    images = images.detach().float().cpu().clamp(0, 1)
    count = images.shape[0]
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(2.0 * cols, 2.1 * rows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if titles:
            ax.set_title(titles[i], fontsize=8, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
