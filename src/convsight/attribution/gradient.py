"""Gradient methods: the input gradient and what is built on it.

:func:`sum_rows` is the one chunked loop of the methods that run the network on many rows per
image (points on a path here, noisy copies in :mod:`.noise`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal, get_args

import numpy as np
import torch

from convsight.attribution.base import BASELINE_HELP, Baseline, Method, baseline_like
from convsight.engines import chunks
from convsight.errors import ConvsightError
from convsight.targets import Targets

RowMaps = Callable[[slice, torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def sum_rows(
    images: int, per_image: int, batch_size: int, maps: RowMaps, device: torch.device
) -> list[torch.Tensor]:
    """Sums over each image's ``per_image`` rows of what ``maps`` gives for them.

    Row ``r`` belongs to image ``r // per_image`` and is that image's row ``r % per_image``.
    ``maps(part, image, index)`` gets ``batch_size`` consecutive rows at a time (their slice
    and, per row, its image and index, on ``device``) and returns one or more tensors with a
    row each; their sums come back in the same order, one row per image.
    """
    totals: list[torch.Tensor] = []
    for part in chunks(images * per_image, batch_size):
        rows = torch.arange(part.start, part.stop, device=device)
        image = rows // per_image
        values = maps(part, image, rows % per_image)
        if not totals:
            totals = [v.new_zeros(images, *v.shape[1:]) for v in values]
        for total, value in zip(totals, values, strict=True):
            total.index_add_(0, image, value)
    return totals


class Saliency(Method):
    """Image-specific class saliency: |d score / d pixel| (Simonyan et al. 2014).

    https://arxiv.org/abs/1312.6034 — the map shown is the maximum over colour channels.
    """

    name = "saliency"
    title = "Saliency"
    paper = "https://arxiv.org/abs/1312.6034"
    reduce = "max_abs"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        absolute: Annotated[bool, "the gradient's absolute value"] = True,
    ) -> torch.Tensor:
        grad = self.input_gradient(inputs, targets)
        return grad.abs() if absolute else grad


class InputXGradient(Method):
    """Input times gradient (Shrikumar et al. 2016), https://arxiv.org/abs/1605.01713."""

    name = "ixg"
    title = "Input x Gradient"
    paper = "https://arxiv.org/abs/1605.01713"

    def _attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        return inputs * self.input_gradient(inputs, targets)


Rule = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle", "riemann_right"
]
"""The quadrature rules of the path integral (captum's names)."""
RULES: tuple[str, ...] = get_args(Rule)


def path_weights(steps: int, rule: Rule) -> tuple[list[float], list[float]]:
    """Points in [0, 1] and weights of a quadrature rule for the path integral."""
    if steps < 1:
        raise ConvsightError("the path integral needs at least one step")
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return list(0.5 * (1 + x)), list(0.5 * w)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ConvsightError("the trapezoid rule needs at least two steps")
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = weights[0] / 2
        return list(np.linspace(0, 1, steps)), weights
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if rule not in offsets:
        raise ConvsightError(f"unknown integration rule '{rule}' ({', '.join(RULES)})")
    return [(i + offsets[rule]) / steps for i in range(steps)], [1 / steps] * steps


class IntegratedGradients(Method):
    """Integrated Gradients (Sundararajan et al. 2017), https://arxiv.org/abs/1703.01365.

    The path from ``baseline`` (pixels, default black: a number, one value per channel, an
    image or one image per input) to the input is integrated with
    ``steps`` points of ``rule``; ``batch_size`` bounds how many path points (over all images)
    go through the network at once, so memory does not grow with ``steps``.
    """

    name = "ig"
    title = "Integrated Gradients"
    paper = "https://arxiv.org/abs/1703.01365"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        steps: Annotated[int, "points on the path from the baseline to the input"] = 50,
        baseline: Annotated[Baseline, f"where the path starts ({BASELINE_HELP})"] = 0.0,
        rule: Annotated[Rule, "the quadrature rule"] = "gausslegendre",
        batch_size: Annotated[int, "path points (over all images) per forward pass"] = 32,
    ) -> torch.Tensor:
        alphas, weights = path_weights(steps, rule)
        alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device).view(-1, 1, 1, 1)
        weight = torch.tensor(weights, dtype=inputs.dtype, device=inputs.device).view(-1, 1, 1, 1)
        base = baseline_like(baseline, inputs)
        delta = inputs - base

        def gradients(part: slice, image: torch.Tensor, step: torch.Tensor) -> list[torch.Tensor]:
            x = base[image] + alpha[step] * delta[image]
            return [self.input_gradient(x, targets[image.cpu()]) * weight[step]]

        (total,) = sum_rows(inputs.shape[0], steps, batch_size, gradients, inputs.device)
        return delta * total
