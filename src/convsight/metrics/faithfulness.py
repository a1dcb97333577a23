"""Deletion and insertion curves and their area (the RISE protocol, Petsiuk et al. 2018).

https://arxiv.org/abs/1806.07421 — deletion removes the most important pixels first (set to a
baseline, black by default) and watches the target probability fall; insertion starts from a
blurred copy and puts the most important pixels back first. ``step`` pixels change per step;
a curve has ``ceil(H * W / step) + 1`` points, the area under it (trapezoid over [0, 1]) is
the AUC. Lower deletion AUC and higher insertion AUC mean a more faithful map. Every image
and every step of a batch go through the network in chunks of ``batch_size`` rows
(``engine="frozen"``: a traced, frozen copy of the network, faster on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import torch
import torch.nn.functional as F

from convsight.attribution.base import check_inputs
from convsight.engines import DEFAULT_ENGINE, ForwardEngine, forward_scores, predict_classes
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import ClassTarget, TargetLike, repeated, resolve_targets

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass
class Curves:
    """The target's score (a class's: its probability) after each step (N x steps+1) and the
    fraction of pixels changed."""

    kind: str
    scores: torch.Tensor
    fractions: torch.Tensor
    run: dict[str, Any] = field(default_factory=dict)  # engine that ran, and any fallback

    @property
    def auc(self) -> torch.Tensor:
        """Area under each curve (N)."""
        return auc(self.scores)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves sampled evenly on [0, 1] (N x points -> N)."""
    points = curves.shape[-1]
    if points < 2:
        raise ConvsightError("a curve needs at least two points")
    inner = curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2
    return inner / (points - 1)


def gaussian_blur(pixels: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The blurred copy insertion starts from (RISE: an 11-pixel Gaussian, sigma 5)."""
    half = kernel // 2
    x = torch.arange(kernel, dtype=pixels.dtype, device=pixels.device) - half
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    c = pixels.shape[1]
    padded = F.pad(pixels, (half, half, half, half), mode="reflect")
    out = F.conv2d(padded, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


def _order(saliency: torch.Tensor) -> torch.Tensor:
    """For each pixel its rank in decreasing saliency (N x H*W; ties broken by position)."""
    flat = saliency.flatten(1).float()
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def _curves(
    kind: str,
    model: Model,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: TargetLike,
    start: torch.Tensor,
    finish: torch.Tensor,
    step: int = 224,
    batch_size: int = 16,
    engine: ForwardEngine = DEFAULT_ENGINE,
) -> Curves:
    inputs = check_inputs(model, inputs)
    n, _, h, w = inputs.shape
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3 or saliency.shape[0] != n:
        raise ConvsightError(
            f"saliency maps have shape {tuple(saliency.shape)}; need one map per image (N x H x W)"
        )
    if tuple(saliency.shape[1:]) != (h, w):
        saliency = F.interpolate(saliency[:, None].float(), (h, w), mode="bilinear")[:, 0]
    if step < 1:
        raise ConvsightError("the step must be at least one pixel")
    targets = resolve_targets(model, target, n)
    if targets is None:
        targets = ClassTarget(predict_classes(model, inputs, batch_size))
    # class targets are scored by their probability; others (output:0, ...) as they are
    score = "probability" if getattr(targets, "classwise", True) else "logit"
    steps = math.ceil(h * w / step)
    rank = _order(saliency.to(inputs.device)).view(n, 1, h, w)
    start, finish = start.to(inputs.device), finish.to(inputs.device)

    def build(part: slice) -> torch.Tensor:
        rows = torch.arange(part.start, part.stop, device=inputs.device)
        image, k = rows // (steps + 1), rows % (steps + 1)
        changed = rank[image] < (k * step).view(-1, 1, 1, 1)
        return torch.where(changed, finish[image], start[image])

    run: dict[str, Any] = {}
    scores = forward_scores(
        model,
        build,
        repeated(targets, n, steps + 1),
        batch_size,
        output=score,
        total=n * (steps + 1),
        engine=engine,
        run=run,
    ).view(n, steps + 1)
    fractions = torch.clamp(torch.arange(steps + 1) * step / (h * w), max=1.0)
    return Curves(kind, scores, fractions, {**run, "score": score})


class CurveSettings(TypedDict, total=False):
    """What both curves take besides the model, images, maps and targets: ``step`` (pixels
    changed per step, default 224), ``batch_size`` (rows per forward pass, default 16) and
    ``engine`` ("eager", the default, or "frozen": a traced, frozen copy of the network)."""

    step: int
    batch_size: int
    engine: ForwardEngine


def deletion(
    model: Model,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: TargetLike = None,
    *,
    baseline: float | torch.Tensor | None = None,
    **settings: Unpack[CurveSettings],
) -> Curves:
    """Deletion curves: the most salient ``step`` pixels at a time set to ``baseline``.

    The default baseline is the model's mean colour (zero after normalization, as in the RISE
    code); give 0.0 for black.
    """
    inputs = check_inputs(model, inputs)
    if baseline is None:
        base = torch.tensor(model.card.mean, dtype=inputs.dtype, device=inputs.device)
        base = base.view(1, -1, 1, 1)
    else:
        base = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    finish = base.expand_as(inputs)
    return _curves("deletion", model, inputs, saliency, target, inputs, finish, **settings)


def insertion(
    model: Model,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: TargetLike = None,
    *,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    **settings: Unpack[CurveSettings],
) -> Curves:
    """Insertion curves: from a blurred copy, the most salient ``step`` pixels at a time back."""
    inputs = check_inputs(model, inputs)
    blurred = gaussian_blur(inputs, blur_kernel, blur_sigma)
    return _curves("insertion", model, inputs, saliency, target, blurred, inputs, **settings)


def deletion_auc(
    model: Model, inputs: torch.Tensor, saliency: torch.Tensor, **options
) -> torch.Tensor:
    """The area under each image's deletion curve (lower is better)."""
    return deletion(model, inputs, saliency, **options).auc


def insertion_auc(
    model: Model, inputs: torch.Tensor, saliency: torch.Tensor, **options
) -> torch.Tensor:
    """The area under each image's insertion curve (higher is better)."""
    return insertion(model, inputs, saliency, **options).auc
