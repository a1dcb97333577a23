"""Heat maps over images: the saliency panel and the faithfulness / sanity plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine


def display_map(heat: torch.Tensor) -> np.ndarray:
    """A map scaled to [0, 1] for display: its magnitude over its 99th percentile, clipped.

    Signed maps (IG, Input x Gradient, occlusion) are shown by their positive part, the
    evidence for the class.
    """
    heat = heat.detach().float().cpu()
    if float(heat.min()) < 0:
        heat = heat.clamp(min=0)
    top = float(torch.quantile(heat.flatten(), 0.99)) if heat.numel() else 0.0
    if top <= 0:
        top = float(heat.max()) or 1.0
    return (heat / top).clamp(0, 1).numpy()


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """A map over its image as one H x W x 3 uint8 picture: the image blended with the map
    (:func:`display_map`, resized to the image) in the panels' colour map (jet)."""
    from matplotlib import colormaps

    rgb = image.detach().float().cpu().clamp(0, 1)
    rgb = rgb.expand(3, *rgb.shape[1:]) if rgb.shape[0] == 1 else rgb[:3]
    heat = heat.detach().float().cpu()
    if tuple(heat.shape[-2:]) != tuple(rgb.shape[-2:]):
        size = tuple(rgb.shape[-2:])
        heat = torch.nn.functional.interpolate(heat.view(1, 1, *heat.shape[-2:]), size=size)[0, 0]
    colored = colormaps["jet"](display_map(heat))[..., :3]
    mixed = (1 - alpha) * rgb.permute(1, 2, 0).numpy() + alpha * colored
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def saliency_panel(
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    row_titles: Sequence[str] | None = None,
    title: str = "",
    alpha: float = 0.55,
    cmap: str = "jet",
) -> Figure:
    """One row per image: the image, then each method's map as a heat map over it.

    ``images`` are pixels (N x C x H x W in [0, 1]); ``maps`` holds, per method title, one
    map per image (N x H x W).
    """
    images = images.detach().float().cpu().clamp(0, 1)
    n = images.shape[0]
    cols = 1 + len(maps)
    layout = ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
    fig = Figure(figsize=(1.9 * cols, 2.0 * n + (0.3 if title else 0)), layout=layout)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].permute(1, 2, 0).numpy()
        grey = img.mean(2) if img.shape[2] == 3 else img[:, :, 0]
        ax = axes[i, 0]
        ax.imshow(img if img.shape[2] == 3 else grey, cmap=None if img.shape[2] == 3 else "gray")
        ax.set_title(row_titles[i] if row_titles else "", fontsize=7, pad=2)
        for j, (name, values) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.imshow(display_map(values[i]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            if i == 0:
                ax.set_title(name, fontsize=8, pad=2)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def faithfulness_curves(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    title: str = "",
    score: str = "target probability",
) -> Figure:
    """Mean deletion and insertion curves per method: ``curves[kind][method] = (x, y)``;
    ``score`` names the values (a class's probability, or another target's score)."""
    kinds = list(curves)
    fig = Figure(figsize=(5 * len(kinds), 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        for method, (x, y) in curves[kind].items():
            ax.plot(x, y, label=method, lw=1.4)
        ax.set_xlabel("fraction of pixels " + ("deleted" if kind == "deletion" else "inserted"))
        ax.set_ylabel(f"{score} (mean over images)")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} AUC is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def sanity_plot(
    results: Mapping[str, tuple[Sequence[str], Sequence[float]]], title: str = ""
) -> Figure:
    """Rank correlation with the original map after each randomization stage, per method."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    labels: Sequence[str] = []
    for method, (layers, values) in results.items():
        ax.plot(range(len(values)), values, "o-", label=method, ms=3)
        labels = layers
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=6, ha="right")
    ax.set_xlabel("randomized from the top down to")
    ax.set_ylabel("Spearman rank correlation")
    ax.axhline(0, color="grey", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
