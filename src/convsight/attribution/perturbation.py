"""Perturbation methods: change the input, watch the score."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from convsight.attribution.base import BASELINE_HELP, Baseline, Method, baseline_like
from convsight.engines import Engine, Windows, score_engine
from convsight.errors import ConvsightError
from convsight.targets import Targets

Size = int | tuple[int, int]


def _pair(value: Size, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ConvsightError(f"occlusion {what} must be a positive int or (height, width)")
    return int(pair[0]), int(pair[1])


def window_starts(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> tuple[list[int], list[int]]:
    """Top rows and left columns of the windows: every ``stride`` pixels, the last one may hang
    over the edge (it is cut there), so every pixel is covered at least once."""
    (h, w), (wh, ww), (sh, sw) = size, window, stride
    if wh > h or ww > w:
        raise ConvsightError(f"occlusion window {wh}x{ww} is larger than the image {h}x{w}")
    if (sh > wh and wh < h) or (sw > ww and ww < w):
        raise ConvsightError(
            f"occlusion stride {sh}x{sw} is larger than the window {wh}x{ww}: pixels between "
            "windows would never be occluded; use a stride no larger than the window"
        )
    ys = [i * sh for i in range(math.ceil((h - wh) / sh) + 1)]
    xs = [i * sw for i in range(math.ceil((w - ww) / sw) + 1)]
    return ys, xs


def window_masks(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """One boolean H x W mask per window position (row-major), covering the whole image."""
    (h, w), (wh, ww) = size, window
    ys, xs = window_starts(size, window, stride)
    masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            masks[i * len(xs) + j, y : y + wh, x : x + ww] = True
    return masks


class Occlusion(Method):
    """Occlusion: the score drop when a window is set to a baseline (Zeiler & Fergus 2014).

    https://arxiv.org/abs/1311.2901 — each pixel gets the mean drop over the windows that cover
    it. ``baseline`` (pixels) is a number, one value per channel (C or C x 1 x 1), an image
    (C x H x W) or one image per input (N x C x H x W). The stride may not exceed the window
    (pixels between windows would never be occluded). Windows of all images are batched:
    ``batch_size`` occluded images per forward pass (default: 16 for the incremental engine,
    else :func:`~convsight.engines.forward_batch`).
    ``engine``: "incremental" (the default) recomputes only the part of each feature map a
    window changes (see :mod:`convsight.engines.incremental`), "frozen" runs a traced,
    frozen copy of the whole network, "eager" the module itself. An engine that cannot be
    built for this network, fails, or disagrees with the module on the first windows falls
    back to the module; ``last_run`` records the engine that ran and why.
    """

    name = "occlusion"
    title = "Occlusion"
    paper = "https://arxiv.org/abs/1311.2901"
    reduce = "mean"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        window: Annotated[Size, "the occluded window's side, or (height, width)"] = 16,
        stride: Annotated[Size, "pixels between windows, or (down, across)"] = 8,
        baseline: Annotated[Baseline, f"what a window is set to ({BASELINE_HELP})"] = 0.0,
        batch_size: Annotated[int | None, "occluded images per forward pass"] = None,
        engine: Annotated[Engine, "how the occluded images are scored"] = "incremental",
    ) -> torch.Tensor:
        n, c, h, w = inputs.shape
        size, win, step = (h, w), _pair(window, "window"), _pair(stride, "stride")
        masks = window_masks(size, win, step).to(inputs.device)
        count = masks.shape[0]
        windows = Windows(
            masks, window_starts(size, win, step), win, baseline_like(baseline, inputs)
        )
        runner = score_engine(self.model, engine)
        drop = runner.occlusion_drops(inputs, targets, windows, batch_size)
        self.last_run.update(runner.record())
        flat = masks.view(count, h * w).to(inputs.dtype)
        attribution = (drop.to(inputs.dtype) @ flat) / flat.sum(0).clamp(min=1)
        return attribution.view(n, 1, h, w).expand(n, c, h, w).contiguous()
