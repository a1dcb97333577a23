"""The one engine type: how a model's forward passes run when only scores are needed.

An engine scores pixel inputs (``scores``) and occluded copies of images
(``occlusion_drops``); after each call ``ran`` names the engine that ran and ``fallback`` says
why not this one (None when it did). Engines are chosen by name with
:func:`convsight.engines.score_engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from convsight.engines.base import (
    DEFAULT_ENGINE,
    Engine,
    chunks,
    failure_reason,
    forward_batch,
    select,
)
from convsight.engines.layout import memory_format_for
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import Target, repeated

Network = Callable[[torch.Tensor], torch.Tensor]
Pixels = torch.Tensor | Callable[[slice], torch.Tensor]


@dataclass(frozen=True)
class Windows:
    """Occluding windows of one ``size`` (height, width): one boolean H x W mask per position
    (``masks``), their top rows and left columns (``starts``), and the pixels they are set
    to (``baseline``, N x C x H x W like the images)."""

    masks: torch.Tensor
    starts: tuple[list[int], list[int]]
    size: tuple[int, int]
    baseline: torch.Tensor


def _rows(pixels: Pixels, total: int | None) -> tuple[Callable[[slice], torch.Tensor], int]:
    """The rows of a slice, and how many there are, from a tensor or a function of a slice."""
    if isinstance(pixels, torch.Tensor):
        tensor = pixels

        def build(part: slice) -> torch.Tensor:
            return tensor[part]

        return build, tensor.shape[0]
    if total is None:
        raise ValueError("total is needed when pixels is a function")
    return pixels, total


class ScoreEngine:
    """The module itself ("eager"); a subclass runs a derived copy of the network and falls
    back to the module where the copy cannot be built or fails."""

    name: ClassVar[Engine] = DEFAULT_ENGINE

    def __init__(self, model: Model) -> None:
        self.model = model
        self.ran: Engine = self.name
        self.fallback: str | None = None
        self.timings: dict[str, float] = {}

    def record(self) -> dict[str, Any]:
        """How the last call ran, for a method's ``last_run``: any timings of it, then
        ``requested_engine``, ``engine`` (the one that ran) and ``fallback``."""
        return {
            **self.timings,
            "requested_engine": self.name,
            "engine": self.ran,
            "fallback": self.fallback,
        }

    def network(self, example: Callable[[], torch.Tensor]) -> Network:
        """What runs normalized inputs (``example()`` gives the first row of pixels); sets
        ``ran`` and ``fallback``."""
        self.ran, self.fallback = DEFAULT_ENGINE, None
        return self.model.module

    def scores(
        self,
        pixels: Pixels,
        targets: torch.Tensor | Target,
        batch_size: int = 64,
        output: str = "logit",
        total: int | None = None,
    ) -> torch.Tensor:
        """Target scores for many pixel inputs, no gradients, ``batch_size`` rows a pass.

        ``pixels`` is a tensor, or a function that builds the rows of a slice (with ``total``
        rows in all) so that only one chunk is in memory. ``targets``: one class per row, or a
        :class:`~convsight.targets.Target`.
        ``output`` is "logit" or "probability" (softmax). A derived copy that fails is
        replaced by the module itself (and ``fallback`` says so).
        """
        build, total = _rows(pixels, total)
        if output == "probability" and isinstance(targets, Target) and not targets.classwise:
            raise ConvsightError(
                f"probabilities need class scores; {targets.describe()} is scored as it is"
            )
        model = self.model
        layout, _ = memory_format_for(model)
        net = self.network(lambda: build(slice(0, 1)))

        def run(net: Network) -> torch.Tensor:
            result = torch.empty(total)
            with torch.inference_mode():
                for part in chunks(total, batch_size):
                    x = model.normalize(build(part).to(model.device))
                    logits = net(x.contiguous(memory_format=layout))
                    if output == "probability":
                        logits = logits.softmax(1)
                    result[part] = select(logits, targets[part]).float().cpu()
            return result

        try:
            return run(net)
        except Exception as exc:  # noqa: BLE001 - the derived copy failed: run the module itself
            if self.ran == DEFAULT_ENGINE:
                raise
            self.ran = DEFAULT_ENGINE
            self.fallback = f"the {self.name} copy failed ({failure_reason(exc)})"
            return run(model.module)

    def occlusion_drops(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | Target,
        windows: Windows,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """N x windows score drops (clean minus occluded target score), each occluded image
        through the whole network, ``batch_size`` rows a pass (default
        :func:`~convsight.engines.base.forward_batch`)."""
        batch_size = batch_size or forward_batch(self.model.device)
        masks, base = windows.masks, windows.baseline
        n, count = inputs.shape[0], masks.shape[0]

        def build(part: slice) -> torch.Tensor:
            rows = torch.arange(part.start, part.stop, device=inputs.device)
            image, win = rows // count, rows % count
            return torch.where(masks[win].unsqueeze(1), base[image], inputs[image])

        original = self.scores(inputs, targets, batch_size)
        rows = repeated(targets, n, count)
        occluded = self.scores(build, rows, batch_size, total=n * count)
        return (original.repeat_interleave(count) - occluded).view(n, count).to(inputs.device)
