"""Perturbation methods: change the input, watch the score."""

from __future__ import annotations

import math
import time
import weakref
from typing import Annotated, Literal, get_args

import torch

from convsight.attribution.base import (
    BASELINE_HELP,
    Baseline,
    Method,
    baseline_like,
    cached_for,
    chunks,
    failure_reason,
    forward_batch,
    forward_scores,
    memory_format_for,
    select,
)
from convsight.attribution.incremental import IncrementalNet, Patch, materialize
from convsight.errors import ConvsightError
from convsight.models import Model

Engine = Literal["incremental", "frozen", "eager"]
"""How occlusion scores its occluded images (see :class:`Occlusion`)."""
ENGINES: tuple[str, ...] = get_args(Engine)
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
    else :func:`~convsight.attribution.base.forward_batch`).
    ``engine``: "incremental" (the default) recomputes only the part of each feature map a
    window changes (see :mod:`convsight.attribution.incremental`), "frozen" runs a traced,
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
        targets: torch.Tensor,
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
        base = baseline_like(baseline, inputs)
        drop, used, fallback = None, engine, None
        if engine == "incremental":
            net, fallback = incremental_net(self.model)
            if net is not None:  # small boxes: larger batches amortize the per-layer work
                starts = window_starts(size, win, step)
                try:
                    net.tail_seconds, began = 0.0, time.perf_counter()
                    drop, fallback = _incremental_drops(
                        self.model, net, inputs, targets, masks, starts, win, base, batch_size or 16
                    )
                    if drop is not None:  # where the time went: the rows' whole-map tail
                        self.last_run["incremental_seconds"] = time.perf_counter() - began
                        self.last_run["whole_map_tail_seconds"] = net.tail_seconds
                except Exception as exc:  # noqa: BLE001 - any failure: run the module itself
                    fallback = f"incremental inference failed ({failure_reason(exc)})"
        if drop is None:
            batch_size = batch_size or forward_batch(self.model.device)
            run: dict = {}
            full = "eager" if engine == "incremental" else engine
            drop = self._full_drops(inputs, targets, masks, base, batch_size, full, run)
            used, fallback = run["engine"], fallback or run["fallback"]
        self.last_run.update(requested_engine=engine, engine=used, fallback=fallback)
        flat = masks.view(count, h * w).to(inputs.dtype)
        attribution = (drop.to(inputs.dtype) @ flat) / flat.sum(0).clamp(min=1)
        return attribution.view(n, 1, h, w).expand(n, c, h, w).contiguous()

    def _full_drops(self, inputs, targets, masks, base, batch_size, engine, run) -> torch.Tensor:
        """N x windows score drops, every occluded image through the whole network."""
        n, count = inputs.shape[0], masks.shape[0]

        def build(part: slice) -> torch.Tensor:
            rows = torch.arange(part.start, part.stop, device=inputs.device)
            image, win = rows // count, rows % count
            return torch.where(masks[win].unsqueeze(1), base[image], inputs[image])

        original = forward_scores(self.model, inputs, targets, batch_size, engine=engine, run=run)
        occluded = forward_scores(
            self.model,
            build,
            targets.repeat_interleave(count),
            batch_size,
            total=n * count,
            engine=engine,
            run=run,
        )
        return (original.repeat_interleave(count) - occluded).view(n, count).to(inputs.device)


_INCREMENTAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def incremental_net(model: Model) -> tuple[IncrementalNet | None, str | None]:
    """The model's network as an :class:`IncrementalNet` (cached until a parameter changes),
    or None and why not (``torch.fx`` cannot trace it, ...)."""

    def build() -> tuple[IncrementalNet | None, str | None]:
        try:
            return IncrementalNet(model.module), None
        except Exception as exc:  # noqa: BLE001 - untraceable (control flow, ...): run it whole
            return None, f"torch.fx cannot trace the network ({failure_reason(exc)})"

    return cached_for(_INCREMENTAL, model.module, build)


def _incremental_drops(
    model: Model,
    net: IncrementalNet,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    starts: tuple[list[int], list[int]],
    window: tuple[int, int],
    base: torch.Tensor,
    batch_size: int,
) -> tuple[torch.Tensor | None, str | None]:
    """N x windows score drops by incremental inference; None and why when a check against
    the whole network fails (then the caller runs it whole)."""
    n, _, h, w = inputs.shape
    count = masks.shape[0]
    (wh, ww) = window
    # each window's box: window-sized, moved inside the image where the window hangs over
    ys, xs = starts
    top = torch.tensor([y for y in ys for _ in xs], device=masks.device).clamp(max=h - wh)
    left = torch.tensor(xs * len(ys), device=masks.device).clamp(max=w - ww)
    rows = top[:, None] + torch.arange(wh, device=top.device)
    cols = left[:, None] + torch.arange(ww, device=top.device)
    inside = masks[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
    drops = torch.empty(n, count)
    layout, _ = memory_format_for(model)
    with torch.inference_mode():
        for i in range(n):
            image = inputs[i : i + 1].to(model.device)
            x = model.normalize(image).contiguous(memory_format=layout)
            clean = net.clean_values(x)
            output = net.clean_output(clean)
            if i == 0 and not _agrees(output, model.module(x)):
                return None, "incremental inference gives another output for the clean image"
            original = float(output[0, targets[i]])
            for part in chunks(count, batch_size):
                crops = image[0][:, rows[part][:, :, None], cols[part][:, None, :]]
                fills = base[i][:, rows[part][:, :, None], cols[part][:, None, :]]
                crops = torch.where(inside[part][None], fills, crops).permute(1, 0, 2, 3)
                patch = Patch(x, model.normalize(crops), top[part], left[part])
                scores = select(
                    net.forward(clean, patch), targets[i].expand(part.stop - part.start)
                )
                if i == 0 and part.start == 0:  # check the first rows against the whole network
                    first = Patch(x, patch.values[:4], patch.top[:4], patch.left[:4])
                    whole = model.module(materialize(first))
                    expected = select(whole, targets[i].expand(whole.shape[0]))
                    if not _agrees(scores[:4], expected):
                        return None, "incremental inference disagrees with the network"
                drops[i, part] = original - scores.float().cpu()
    return drops.to(inputs.device), None


def _agrees(got: object, expected: object) -> bool:
    return (
        isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and got.shape == expected.shape
        and torch.allclose(got, expected, rtol=1e-3, atol=1e-4)
    )
