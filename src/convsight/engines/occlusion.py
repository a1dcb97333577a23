"""The incremental engine: occluded images through :class:`IncrementalNet`, which re-runs only
the part of each feature map a window changes (see :mod:`convsight.engines.incremental`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from convsight.engines.base import DEFAULT_ENGINE, cached, chunks, failure_reason, select
from convsight.engines.engine import Network, ScoreEngine, Windows
from convsight.engines.incremental import IncrementalNet, Patch, materialize
from convsight.engines.layout import memory_format_for
from convsight.models import Model
from convsight.targets import Target


def incremental_net(model: Model) -> tuple[IncrementalNet | None, str | None]:
    """The model's network as an :class:`IncrementalNet` (kept on the model until a parameter
    changes), or None and why not (``torch.fx`` cannot trace it, ...)."""

    def build() -> tuple[IncrementalNet | None, str | None]:
        try:
            return IncrementalNet(model.module), None
        except Exception as exc:  # noqa: BLE001 - untraceable (control flow, ...): run it whole
            return None, f"torch.fx cannot trace the network ({failure_reason(exc)})"

    return cached(model, "incremental", build)


class IncrementalEngine(ScoreEngine):
    """Occluded images by incremental inference, ``batch_size`` (default 16: small boxes,
    larger batches amortize the per-layer work) a pass. A network it cannot build, a failure,
    or a disagreement with the module on the first windows falls back to the module itself
    (the eager engine), and ``fallback`` says why. Other inputs (:meth:`scores`) run on the
    module itself: only occlusion changes a small part of each image."""

    name = "incremental"

    def network(self, example: Callable[[], torch.Tensor]) -> Network:
        self.ran, self.fallback = DEFAULT_ENGINE, "incremental inference is for occluded images"
        return self.model.module

    def occlusion_drops(
        self,
        inputs: Tensor,
        targets: Tensor | Target,
        windows: Windows,
        batch_size: int | None = None,
    ) -> Tensor:
        self.timings = {}
        net, fallback = incremental_net(self.model)
        if net is not None:
            try:
                net.tail_seconds, began = 0.0, time.perf_counter()
                drops, fallback = _drops(
                    self.model, net, inputs, targets, windows, batch_size or 16
                )
                if drops is not None:  # where the time went: the rows' whole-map tail
                    self.timings = {
                        "incremental_seconds": time.perf_counter() - began,
                        "whole_map_tail_seconds": net.tail_seconds,
                    }
                    self.ran, self.fallback = self.name, None
                    return drops
            except Exception as exc:  # noqa: BLE001 - any failure: run the module itself
                fallback = f"incremental inference failed ({failure_reason(exc)})"
        eager = ScoreEngine(self.model)
        drops = eager.occlusion_drops(inputs, targets, windows, batch_size)
        self.ran, self.fallback = eager.ran, fallback or eager.fallback
        return drops


def _drops(
    model: Model,
    net: IncrementalNet,
    inputs: torch.Tensor,
    targets: torch.Tensor | Target,
    windows: Windows,
    batch_size: int,
) -> tuple[torch.Tensor | None, str | None]:
    """N x windows score drops by incremental inference; None and why when a check against
    the whole network fails (then the caller runs it whole)."""
    n, _, h, w = inputs.shape
    masks, base = windows.masks, windows.baseline
    count = masks.shape[0]
    (wh, ww) = windows.size
    # each window's box: window-sized, moved inside the image where the window hangs over
    ys, xs = windows.starts
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
            original = float(select(output, targets[i : i + 1]))
            same = torch.full((batch_size,), i, dtype=torch.long)  # image i's target, per row
            for part in chunks(count, batch_size):
                crops = image[0][:, rows[part][:, :, None], cols[part][:, None, :]]
                fills = base[i][:, rows[part][:, :, None], cols[part][:, None, :]]
                crops = torch.where(inside[part][None], fills, crops).permute(1, 0, 2, 3)
                patch = Patch(x, model.normalize(crops), top[part], left[part])
                scores = select(net.forward(clean, patch), targets[same[: part.stop - part.start]])
                if i == 0 and part.start == 0:  # check the first rows against the whole network
                    first = Patch(x, patch.values[:4], patch.top[:4], patch.left[:4])
                    whole = model.module(materialize(first))
                    expected = select(whole, targets[same[: whole.shape[0]]])
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
