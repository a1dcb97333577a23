"""Top dataset examples in one streamed pass: memory bounded by a batch, not by the dataset.

Each channel keeps a running top-k of images by their spatial maximum (with where it is) and
fixed-size summaries: how many images were seen, the sum of their spatial means, and a sample
of per-image maxima and means for histograms: the :data:`SAMPLE` images of least
:func:`sample_key` (every image while there are fewer; a uniform sample beyond, the same
whatever the batches or shards). Summaries of slices merge (:meth:`TopExamples.merge`), so
workers can each stream their slice of the files.

Ties rank the image seen first (the lower index) first; the whole ranking equals sorting every
image's maximum, value descending then index ascending (:func:`brute_force_top`).

:func:`stream_relevant_examples` ranks the images instead by each channel's relevance for one
target (gradient x activation summed over space), with a backward pass per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from convsight.analysis.channel_relevance import batch_relevance
from convsight.analysis.dataset_examples import ImageStats, channel_stats
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to
from convsight.models import Model
from convsight.targets import TargetLike, repeated, resolve_targets

SAMPLE = 2048
"""Images per channel whose maxima and means are kept for histograms."""


def sample_key(indices: Tensor) -> Tensor:
    """A fixed pseudo-random key per image index (Knuth's multiplicative hash)."""
    return (indices.long() * 2654435761) % (2**32)


def _ranked(values: Tensor, images: Tensor, k: int) -> Tensor:
    """Column order of each row: value descending, then image index ascending; the first k."""
    by_image = images.argsort(dim=1, stable=True)
    values = values.gather(1, by_image)
    order = (-values).argsort(dim=1, stable=True)
    return by_image.gather(1, order)[:, :k]


@dataclass
class TopExamples:
    """One layer's streamed statistics (C channels): the top-k images of each channel, and
    the fixed-size summaries of the module's docstring."""

    values: Tensor  # C x k, descending; -inf where fewer than k images were seen
    images: Tensor  # C x k, dataset indices (-1: none)
    positions: Tensor  # C x k x 2, (y, x) of the maximum in the layer's map
    count: int
    mean_sum: Tensor  # C, float64: the sum over images of each channel's spatial mean
    sample_images: Tensor  # S, ascending keys
    sample_maxima: Tensor  # S x C
    sample_means: Tensor  # S x C

    @staticmethod
    def empty(channels: int, top_k: int) -> TopExamples:
        """Nothing seen yet."""
        return TopExamples(
            torch.full((channels, top_k), float("-inf")),
            torch.full((channels, top_k), -1, dtype=torch.long),
            torch.zeros(channels, top_k, 2, dtype=torch.long),
            0,
            torch.zeros(channels, dtype=torch.float64),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, channels),
            torch.empty(0, channels),
        )

    @property
    def top_k(self) -> int:
        return self.values.shape[1]

    def update(self, indices: Tensor, maxima: Tensor, positions: Tensor, means: Tensor) -> None:
        """Add a batch: its images' indices (n), spatial maxima (n x C), their positions
        (n x C x 2) and spatial means (n x C)."""
        batch = TopExamples(
            maxima.T.float(),
            indices.long().expand(maxima.shape[1], -1),
            positions.permute(1, 0, 2).long(),
            len(indices),
            means.double().sum(0),
            indices.long(),
            maxima.float(),
            means.float(),
        )
        merged = TopExamples.merge([self, batch], self.top_k)
        vars(self).update(vars(merged))

    @staticmethod
    def merge(parts: Sequence[TopExamples], top_k: int | None = None) -> TopExamples:
        """The statistics of the union of ``parts`` (disjoint sets of images)."""
        k = top_k or parts[0].top_k
        values = torch.cat([p.values for p in parts], 1)
        images = torch.cat([p.images for p in parts], 1)
        positions = torch.cat([p.positions for p in parts], 1)
        order = _ranked(values, images, k)  # the -1 of "none" have -inf: always last
        keys = torch.cat([p.sample_images for p in parts])
        kept = sample_key(keys).argsort(stable=True)[:SAMPLE]
        return TopExamples(
            values.gather(1, order),
            images.gather(1, order),
            positions.gather(1, order[..., None].expand(-1, -1, 2)),
            sum(p.count for p in parts),
            sum((p.mean_sum for p in parts), torch.zeros_like(parts[0].mean_sum)),
            keys[kept],
            torch.cat([p.sample_maxima for p in parts])[kept],
            torch.cat([p.sample_means for p in parts])[kept],
        )

    def histogram_values(self) -> tuple[Tensor, Tensor]:
        """The sampled images (ascending index) and their maxima, C x S: every image's when
        the dataset holds at most :data:`SAMPLE`."""
        order = self.sample_images.argsort()
        return self.sample_images[order], self.sample_maxima[order].T

    def means(self) -> Tensor:
        """Each channel's spatial mean averaged over every image seen."""
        return (self.mean_sum / max(self.count, 1)).float()


def brute_force_top(maxima: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The reference ranking: every image's maximum (N x C) sorted per channel, value
    descending then index ascending; (values, images), C x k."""
    images = torch.arange(maxima.shape[0]).expand(maxima.shape[1], -1)
    order = _ranked(maxima.T.float(), images, top_k)
    return maxima.T.float().gather(1, order), images.gather(1, order)


Batches = Iterable[tuple[Tensor, Tensor]]
"""Batches of a dataset: each image's index in the dataset (n) and its pixels (n x C x H x W)."""

Observer = Callable[[Tensor, Tensor, dict[str, ImageStats]], None]
"""Told of each batch of the pass: the images' indices, the model's (normalized) input and each
layer's :class:`ImageStats`; it may run more of the model (under ``torch.enable_grad``)."""


@torch.no_grad()
def stream_examples(
    model: Model,
    batches: Batches,
    layers: Sequence[str],
    top_k: int,
    bar: Callable[[int], None] | None = None,
    observe: Observer | None = None,
) -> dict[str, TopExamples]:
    """One pass of ``batches`` as far as the last of ``layers``: each layer's
    :class:`TopExamples`, holding one batch of pixels and activations at a time; ``observe``
    (if given) is told of every batch after its statistics are taken."""
    found: dict[str, TopExamples] = {}

    def reduce(_name: str, out: Tensor) -> ImageStats:
        return channel_stats(out)

    for indices, pixels in batches:
        x = model.normalize(pixels.to(model.device))
        outputs = forward_to(model.module, x, list(layers), reduce=reduce)
        for name in layers:
            _add(found, name, indices, outputs[name], top_k)
        if observe is not None:
            observe(indices, x, outputs)
        if bar is not None:
            bar(len(indices))
    return found


def _add(found: dict[str, TopExamples], name: str, indices: Tensor, stats: ImageStats, k: int):
    """A batch's statistics of layer ``name`` added to ``found`` (made on the first)."""
    if name not in found:
        found[name] = TopExamples.empty(stats.maxima.shape[1], k)
    found[name].update(indices, stats.maxima, stats.positions, stats.means)


def relevance_stats(maps: Tensor) -> ImageStats:
    """A batch's relevance maps (N x C x h x w, or N x C) reduced per image and channel: the
    relevance summed over space (in ``maxima``: what is ranked), where the relevance of one
    location is largest, and the spatial mean."""
    maps = maps if maps.dim() > 2 else maps[..., None, None]
    stats = channel_stats(maps)
    return ImageStats(maps.float().flatten(2).sum(2).cpu(), stats.positions, stats.means)


def stream_relevant_examples(
    model: Model,
    batches: Batches,
    layers: Sequence[str],
    target: TargetLike,
    top_k: int,
    bar: Callable[[int], None] | None = None,
    active: dict[str, TopExamples] | None = None,
) -> dict[str, TopExamples]:
    """One pass of ``batches`` (a forward and a backward pass each): per layer, each channel's
    top images by its relevance for ``target`` (one target, the same for every image: a class
    index or name, or a :class:`~convsight.targets.Target`), the gradient x activation of the
    target's score summed over space, with the position of its largest relevance; holding one
    batch at a time. The values are :class:`TopExamples`'s ``values`` (its "maxima"). Given
    a dict ``active``, it is filled from the same pass with what :func:`stream_examples` gives
    (the top images by activation)."""
    layers = list(dict.fromkeys(layers))
    check_layers(model.module, layers)
    bound = resolve_targets(model, target, 1)
    if bound is None:
        raise ConvsightError("examples by relevance need a target: a class or a Target")
    found: dict[str, TopExamples] = {}
    for indices, pixels in batches:
        rows = repeated(bound, 1, len(indices))
        maps = batch_relevance(model, pixels.to(model.device), rows, layers)
        for name in layers:
            value, relevance = maps[name]
            _add(found, name, indices, relevance_stats(relevance), top_k)
            if active is not None:
                _add(active, name, indices, channel_stats(value), top_k)
        if bar is not None:
            bar(len(indices))
    return found
