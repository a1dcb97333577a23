"""Perturbation methods: change the input, watch the score."""

from __future__ import annotations

import math

import torch

from convsight.attribution.base import Method, forward_scores
from convsight.errors import ConvsightError


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ConvsightError(f"occlusion {what} must be a positive int or (height, width)")
    return int(pair[0]), int(pair[1])


def window_masks(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """One boolean H x W mask per window position (row-major), covering the whole image.

    Windows start every ``stride`` pixels; the last one in each direction may hang over the
    edge (it is cut), so every pixel is covered at least once.
    """
    (h, w), (wh, ww), (sh, sw) = size, window, stride
    if wh > h or ww > w:
        raise ConvsightError(f"occlusion window {wh}x{ww} is larger than the image {h}x{w}")
    ys = [i * sh for i in range(math.ceil((h - wh) / sh) + 1)]
    xs = [i * sw for i in range(math.ceil((w - ww) / sw) + 1)]
    masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            masks[i * len(xs) + j, y : y + wh, x : x + ww] = True
    return masks


class Occlusion(Method):
    """Occlusion: the score drop when a window is set to a baseline (Zeiler & Fergus 2014).

    https://arxiv.org/abs/1311.2901 — each pixel gets the mean drop over the windows that cover
    it. Windows of all images are batched: ``batch_size`` occluded images per forward pass.
    ``engine="frozen"`` runs a traced, frozen copy of the network (faster on CPU).
    """

    name = "occlusion"
    title = "Occlusion"
    reduce = "mean"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        window: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 8,
        baseline: float | torch.Tensor = 0.0,
        batch_size: int = 16,
        engine: str = "eager",
    ) -> torch.Tensor:
        n, c, h, w = inputs.shape
        masks = window_masks((h, w), _pair(window, "window"), _pair(stride, "stride"))
        masks = masks.to(inputs.device)
        count = masks.shape[0]
        base = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)

        def build(part: slice) -> torch.Tensor:
            rows = torch.arange(part.start, part.stop, device=inputs.device)
            image, win = rows // count, rows % count
            return torch.where(masks[win].unsqueeze(1), base, inputs[image])

        original = forward_scores(self.model, inputs, targets, batch_size, engine=engine)
        occluded = forward_scores(
            self.model,
            build,
            targets.repeat_interleave(count),
            batch_size,
            total=n * count,
            engine=engine,
        )
        drop = (original.repeat_interleave(count) - occluded).view(n, count).to(inputs.device)
        flat = masks.view(count, h * w).to(inputs.dtype)
        attribution = (drop.to(inputs.dtype) @ flat) / flat.sum(0).clamp(min=1)
        return attribution.view(n, 1, h, w).expand(n, c, h, w).contiguous()
