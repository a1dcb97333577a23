"""How far to trust a feature visualization: does it reach its unit as natural images do?

* :class:`Reach`: the objective the render maximized, evaluated on the render's final image
  and on the dataset's images (the model's input size, no random transforms): the ratio of
  the render's value to the mean of the unit's top-k images, and the rank the render would
  have among the dataset's images.
* :class:`PathSimilarity` (Geirhos et al. 2023, "Don't trust your eyes: on the (un)reliability
  of feature visualizations", https://arxiv.org/abs/2306.04719): at each layer below the unit
  (:func:`path_layers`), the Spearman correlation of the layer's channel-mean activation
  vector between the render and the mean vector of the unit's top images, and between the
  render and the mean vector of random images. A render whose path over the last third of
  those layers is closer to random images than to its own top images is ``flagged``.
* :mod:`convsight.analysis.trust_stream`: both measures for every row of a render in one
  streamed pass over a dataset or an image folder (memory bounded by a batch and the top-k).
* :func:`transfer`: a class model judged by a second network (top-1 and top-5 for its class).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convsight.errors import ConvsightError
from convsight.layers import capture, check_layers, forward_to
from convsight.models import Model
from convsight.optvis.objectives import OUTPUT, Context, Objective

MAX_PATH_LAYERS = 12
"""At most this many layers below a unit are compared (evenly spaced), so deep nets stay cheap."""

TOP_K = 9
"""The unit's top natural examples a render is compared with."""

RANDOM_IMAGES = 32
"""Random natural images (a fixed-seed sample of the dataset) a render is compared with."""

RANDOM_SEED = 0
"""The seed of the random sample: the same images whatever the render's seed."""

Batches = Iterable[tuple[Tensor, Tensor]]
"""A dataset's batches: each image's index (n) and its pixels (n x C x H x W, [0, 1])."""


# --- the numbers --------------------------------------------------------------------------------


def ranks(values: Tensor) -> Tensor:
    """The 1-based ranks of a 1-D tensor (ascending), ties given their average rank."""
    values = values.flatten().double()
    order = values.argsort(stable=True)
    _, inverse, counts = torch.unique_consecutive(
        values[order], return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    out = torch.empty_like(values)
    out[order] = average[inverse]
    return out


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two vectors (ties averaged); 0 when either is constant
    (no order to compare)."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) != len(rb):
        raise ConvsightError(f"vectors of {len(ra)} and {len(rb)} entries cannot be correlated")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(ra.norm() * rb.norm())
    return 0.0 if norm == 0 else float((ra * rb).sum()) / norm


@dataclass(frozen=True)
class Reach:
    """The render's objective (``value``) against the dataset's: ``top_mean``, the mean of the
    unit's top-k images; ``ratio`` = value / top_mean (None when top_mean <= 0: the unit is
    never positive on its best images); ``rank`` among the ``of`` images (1: above all)."""

    value: float
    top_mean: float
    ratio: float | None
    rank: int
    of: int

    @staticmethod
    def of_counts(value: float, top: Tensor, above: int, of: int) -> Reach:
        """From the top-k values of the dataset and how many images score above ``value``."""
        top_mean = float(top.double().mean()) if len(top) else float("nan")
        ratio = value / top_mean if top_mean > 0 else None
        return Reach(float(value), top_mean, ratio, int(above) + 1, int(of))

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "top_mean": None if math.isnan(self.top_mean) else self.top_mean,
            "ratio": self.ratio,
            "rank": self.rank,
            "of": self.of,
        }

    def mark(self) -> str:
        """A short caption: ``reach 1.3x, rank 1/104``."""
        ratio = "reach -" if self.ratio is None else f"reach {self.ratio:.2g}x"
        return f"{ratio}, rank {self.rank}/{self.of}"


def reach(value: float, dataset_values: Tensor, top_k: int = TOP_K) -> Reach:
    """:class:`Reach` of a render whose objective is ``value``, from every dataset image's
    objective (``dataset_values``, one per image)."""
    values = dataset_values.flatten().float()
    top = values.sort(descending=True).values[:top_k]
    return Reach.of_counts(value, top, int((values > value).sum()), len(values))


def last_layers(count: int) -> int:
    """How many of ``count`` listed layers decide the flag: the last third, at least one."""
    return max(1, math.ceil(count / 3)) if count else 0


@dataclass(frozen=True)
class PathSimilarity:
    """Per layer below the unit: the Spearman correlation of the render's channel-mean
    activations with its top images' (``to_top``) and with random images' (``to_random``).
    ``flagged``: over the last third of the layers (at least one), the mean correlation with
    random images is higher than with the top images."""

    layers: list[str]
    to_top: list[float]
    to_random: list[float]

    @property
    def decisive(self) -> list[str]:
        """The layers that decide the flag."""
        return self.layers[len(self.layers) - last_layers(len(self.layers)) :]

    @property
    def flagged(self) -> bool:
        last = last_layers(len(self.layers))
        if not last:
            return False
        top, rand = self.to_top[-last:], self.to_random[-last:]
        return sum(top) / last < sum(rand) / last

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [
                {"layer": name, "to_top": top, "to_random": rand}
                for name, top, rand in zip(self.layers, self.to_top, self.to_random, strict=True)
            ],
            "decisive": self.decisive,
            "flagged": self.flagged,
        }


def compare_paths(
    layers: Sequence[str],
    render: dict[str, Tensor],
    top: dict[str, Tensor],
    random: dict[str, Tensor],
) -> PathSimilarity:
    """:class:`PathSimilarity` from channel-mean vectors (C per layer): the render's, the mean
    of its top images' and the mean of the random images'."""
    return PathSimilarity(
        list(layers),
        [spearman(render[n], top[n]) for n in layers],
        [spearman(render[n], random[n]) for n in layers],
    )


# --- the model's side ---------------------------------------------------------------------------


def _conv_calls(model: Model, layer: str) -> list[str]:
    """The ``nn.Conv2d`` layers in the order they finish in one forward at the model's input
    size, up to (not with) ``layer`` (:data:`OUTPUT`: the whole model); each called once."""
    module = model.module
    names = [n for n, m in module.named_modules() if n and isinstance(m, nn.Conv2d)]
    order: list[str] = []
    hooks = [
        module.get_submodule(n).register_forward_hook(lambda *_, n=n: order.append(n))
        for n in names
    ]
    try:
        with torch.no_grad():
            x = model.normalize(torch.zeros(1, model.card.channels, *model.card.input_size))
            x = x.to(model.device)
            if layer == OUTPUT:
                model.module(x)
            else:
                forward_to(module, x, [layer])
    finally:
        for hook in hooks:
            hook.remove()
    calls = Counter(order)
    return [n for n in dict.fromkeys(order) if calls[n] == 1 and n != layer]


def path_layers(model: Model, layer: str, limit: int = MAX_PATH_LAYERS) -> list[str]:
    """The layers path similarity compares below ``layer`` (:data:`OUTPUT` for a class):
    the outputs of the convolutions that run before it in the forward pass (a convolution
    called more than once names no one output), at most ``limit`` of them evenly spaced,
    the first and the last always among them."""
    if layer != OUTPUT:
        check_layers(model.module, [layer])
    convs = _conv_calls(model, layer)
    if len(convs) <= limit:
        return convs
    picks = torch.linspace(0, len(convs) - 1, limit).round().long().tolist()
    return [convs[i] for i in dict.fromkeys(picks)]


def at_input_size(model: Model, pixels: Tensor) -> Tensor:
    """Pixel images (N x C x H x W) at the model's input size (bilinear where they differ)."""
    pixels = pixels if pixels.dim() == 4 else pixels[None]
    size = tuple(model.card.input_size)
    if tuple(pixels.shape[-2:]) != size:
        pixels = F.interpolate(pixels.float(), size=size, mode="bilinear", align_corners=False)
    return pixels.float()


@torch.no_grad()
def _forward(
    model: Model, pixels: Tensor, needed: Sequence[str], path: Sequence[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One forward of ``pixels``: the outputs of the ``needed`` layers (:data:`OUTPUT`: the
    model's) and each ``path`` layer's channel means (N x C, taken as the layer runs)."""
    x = model.normalize(pixels.to(model.device))
    names = [n for n in needed if n != OUTPUT]
    wanted = list(dict.fromkeys([*names, *path]))

    def reduce(name: str, out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        means = out.float().flatten(2).mean(2).cpu() if name in path else None
        return (out if name in names else None), means

    if OUTPUT in needed:
        with capture(model.module, wanted, reduce=reduce) as seen:
            out = model.module(x)
            seen = dict(seen)
        seen[OUTPUT] = (out if isinstance(out, Tensor) else out[0], None)
    else:
        seen = forward_to(model.module, x, wanted, reduce=reduce) if wanted else {}
    acts = {n: seen[n][0].float() for n in needed}
    return acts, {n: seen[n][1] for n in path}


def _values(objective: Objective, acts: dict[str, Tensor], pixels: Tensor, x: Tensor, row: int):
    """Row ``row`` of ``objective`` on every image of a forward (n values)."""
    rows = torch.full((len(pixels),), row, dtype=torch.long)
    return objective(Context(acts, pixels, x, 1, rows)).detach().float().cpu().reshape(-1)


def layer_means(
    model: Model, pixels: Tensor, layers: Sequence[str], resize: bool = True
) -> dict[str, Tensor]:
    """Each layer's channel-mean activations (n x C) for ``pixels`` (n images, pixel space,
    taken to the model's input size; ``resize`` False: at their own size)."""
    if resize:
        pixels = at_input_size(model, pixels)
    elif pixels.dim() == 3:
        pixels = pixels[None]
    return _forward(model, pixels.float(), (), layers)[1]


def evaluate(
    model: Model, objective: Objective, rows: int, pixels: Tensor, path: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """Each of the ``rows`` rows of ``objective`` on every image of ``pixels`` (n images,
    pixel space, taken to the model's input size): an n x rows tensor, and each ``path``
    layer's channel means (n x C). No transforms, no model hooks: the plain model."""
    pixels = at_input_size(model, pixels).to(model.device)
    acts, means = _forward(model, pixels, objective.layers, path)
    x = model.normalize(pixels)
    values = [_values(objective, acts, pixels, x, r) for r in range(rows)]
    return torch.stack(values, 1), means


def path_similarity(
    model: Model,
    layer: str,
    render: Tensor,
    top_images: Tensor,
    random_images: Tensor,
    layers: Sequence[str] | None = None,
    resize_render: bool = True,
) -> PathSimilarity:
    """:class:`PathSimilarity` of one render (C x H x W or 1 x C x H x W pixels) of a unit of
    ``layer`` (:data:`OUTPUT` for a class), against its top images and random images (k x C
    x H x W pixels each), at ``layers`` (default :func:`path_layers`). Every image is taken
    to the model's input size; ``resize_render`` False takes the render at its own size (as
    the atlas evaluates its pictures)."""
    names = path_layers(model, layer) if layers is None else list(layers)
    if layer != OUTPUT and names:
        check_layers(model.module, names)
    vectors = [layer_means(model, render, names, resize_render)]
    vectors += [layer_means(model, images, names) for images in (top_images, random_images)]
    mean = [{n: v[n].double().mean(0) for n in names} for v in vectors]
    return compare_paths(names, *mean)


def render_values(model: Model, objective: Objective, images: Tensor) -> Tensor:
    """Row i of ``objective`` on render i (R images, pixel space, at the model's input size,
    no transforms): R values."""
    pixels = at_input_size(model, images).to(model.device)
    acts, _ = _forward(model, pixels, objective.layers, ())
    ctx = Context(acts, pixels, model.normalize(pixels), 1, torch.arange(len(pixels)))
    return objective(ctx).detach().float().cpu().reshape(-1)


# --- a second model as judge --------------------------------------------------------------------


def check_judge(model: Model, judge: Model) -> None:
    """The judge must score the model's classes, in the same order (one sentence if not)."""
    mine, theirs = list(model.card.labels or []), list(judge.card.labels or [])
    if not mine or mine != theirs:
        raise ConvsightError(
            f"judge '{judge.card.name}' has {len(theirs)} classes and model "
            f"'{model.card.name}' {len(mine)}; a judge must score the model's classes, with "
            "the same labels in the same order"
        )


@torch.no_grad()
def transfer(judge: Model, images: Tensor, classes: Sequence[int]) -> list[dict[str, Any]]:
    """Whether ``judge`` sees each image (pixel space, taken to its input size) as its class:
    top-1 and top-5 hits, the judge's top class and its probability for the target class."""
    scores = judge.module(judge.normalize(at_input_size(judge, images).to(judge.device)))
    scores = (scores if isinstance(scores, Tensor) else scores[0]).float().cpu()
    probs = scores.softmax(1)
    top5 = scores.topk(min(5, scores.shape[1]), 1).indices
    return [
        {
            "judge": judge.card.name,
            "top1": bool(top5[i, 0] == c),
            "top5": bool((top5[i] == c).any()),
            "judge_top1": judge.card.label(int(top5[i, 0])),
            "probability": float(probs[i, c]),
        }
        for i, c in enumerate(classes)
    ]
