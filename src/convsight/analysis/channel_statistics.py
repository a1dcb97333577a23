"""Per channel, fixed-size statistics of a streamed dataset pass (the atlas's), from which the
atlas says how far to trust a channel's picture (issue 31) and which classes it serves
(issue 30):

- the exact maximum of the channel over every image and position (a channel whose maximum is at
  most 0 is never positive on the data: *silent*);
- the top-k images by the channel's spatial mean (the objective the atlas renders), values
  descending, ties to the image seen first;
- for a model with class scores (one row of scores per image), per channel and class the sum of
  the channel's gradient x activation relevance for the model's predicted class, summed over
  space, over the images predicted as that class, and per class how many images those are.

Memory is C, C x k, C x K and K numbers per layer, whatever the number of images; summaries of
disjoint slices merge (:meth:`ChannelStatistics.merge`). :func:`stream_channel_statistics`
takes them in the same pass as :func:`~convsight.analysis.streamed_examples.stream_examples`'s
top examples. (The trust measures of a render themselves, reach and path similarity, are
:mod:`convsight.analysis.trust` and :mod:`convsight.analysis.trust_stream`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from convsight.analysis.channel_relevance import relevance_pass
from convsight.analysis.dataset_examples import ImageStats
from convsight.analysis.streamed_examples import Batches, TopExamples, _ranked, stream_examples
from convsight.models import Model


def has_class_scores(model: Model) -> bool:
    """Whether the model's card says it gives class scores (not a feature stack)."""
    return not model.card.features_only and bool(model.card.num_classes)


@dataclass
class ChannelStatistics:
    """One layer's channel statistics (C channels) of the module's docstring."""

    count: int
    maximum: Tensor  # C: the largest activation over every image and position (-inf: none)
    mean_values: Tensor  # C x k: the top spatial means, descending (-inf where fewer)
    mean_images: Tensor  # C x k: their images' dataset indices (-1: none)
    class_sum: Tensor | None = None  # C x K, float64: relevance summed per predicted class
    class_count: Tensor | None = None  # K: images predicted as each class

    @staticmethod
    def empty(channels: int, top_k: int, classes: int | None = None) -> ChannelStatistics:
        """Nothing seen yet (``classes``: the number of class scores, None: no relevance)."""
        return ChannelStatistics(
            0,
            torch.full((channels,), float("-inf")),
            torch.full((channels, top_k), float("-inf")),
            torch.full((channels, top_k), -1, dtype=torch.long),
            None if classes is None else torch.zeros(channels, classes, dtype=torch.float64),
            None if classes is None else torch.zeros(classes, dtype=torch.long),
        )

    def update(
        self,
        indices: Tensor,
        stats: ImageStats,
        relevance: Tensor | None = None,
        predicted: Tensor | None = None,
    ) -> None:
        """Add a batch: its images' indices (n), their statistics (maxima and means, n x C)
        and, with class sums kept, each channel's relevance (n x C) for each image's
        ``predicted`` class (n)."""
        sums = counts = None
        if self.class_sum is not None and relevance is not None and predicted is not None:
            predicted = predicted.long().cpu()
            sums = torch.zeros_like(self.class_sum)
            sums.index_add_(1, predicted, relevance.double().cpu().T)
            counts = torch.bincount(predicted, minlength=self.class_sum.shape[1])
        batch = ChannelStatistics(
            len(indices),
            stats.maxima.float().amax(0),
            stats.means.T.float(),
            indices.long().expand(stats.means.shape[1], -1),
            sums,
            counts,
        )
        vars(self).update(vars(ChannelStatistics.merge([self, batch], self.top_k)))

    @property
    def top_k(self) -> int:
        return self.mean_values.shape[1]

    @staticmethod
    def merge(parts: Sequence[ChannelStatistics], top_k: int | None = None) -> ChannelStatistics:
        """The statistics of the union of ``parts`` (disjoint sets of images)."""
        k = top_k or parts[0].top_k
        values = torch.cat([p.mean_values for p in parts], 1)
        images = torch.cat([p.mean_images for p in parts], 1)
        order = _ranked(values, images, k)
        kept = [p for p in parts if p.class_sum is not None and p.class_count is not None]
        return ChannelStatistics(
            sum(p.count for p in parts),
            torch.stack([p.maximum for p in parts]).amax(0),
            values.gather(1, order),
            images.gather(1, order),
            _total([p.class_sum for p in kept]) if len(kept) == len(parts) else None,
            _total([p.class_count for p in kept]) if len(kept) == len(parts) else None,
        )


def _total(tensors: list) -> Tensor | None:
    """The sum of ``tensors`` (None where there are none)."""
    return sum(tensors[1:], tensors[0].clone()) if tensors else None


def class_relevance(
    model: Model, x: Tensor, layers: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor] | None:
    """Per image of the normalized input ``x``, each channel's gradient x activation relevance
    at ``layers`` for the model's predicted class, summed over space (n x C each, on the CPU),
    and the predicted classes (n); None when the output is not one row of scores per image."""
    maps, output = relevance_pass(model, x, None, layers)
    if not maps:
        return None
    found = {name: maps[name][1].flatten(2).sum(2).float().cpu() for name in maps}
    return found, output.argmax(1).cpu()


class _Observer:
    """Takes each layer's :class:`ChannelStatistics` from the batches of a streamed pass."""

    def __init__(self, model: Model, layers: Sequence[str], top_k: int, relevance: bool) -> None:
        self.model, self.layers, self.top_k = model, list(layers), top_k
        self.relevance = relevance and has_class_scores(model)
        self.found: dict[str, ChannelStatistics] = {}
        self.no_scores = False  # the output turned out not to be one row of scores per image

    def __call__(self, indices: Tensor, x: Tensor, stats: dict[str, ImageStats]) -> None:
        classes = self.model.card.num_classes if self.relevance else None
        relevance = class_relevance(self.model, x, self.layers) if self.relevance else None
        if self.relevance and relevance is None:
            self.relevance, self.no_scores, classes = False, True, None
            self.found = {name: _without_classes(t) for name, t in self.found.items()}
        for name in self.layers:
            channels = stats[name].means.shape[1]
            if name not in self.found:
                self.found[name] = ChannelStatistics.empty(channels, self.top_k, classes)
            rows, predicted = (relevance[0][name], relevance[1]) if relevance else (None, None)
            self.found[name].update(indices, stats[name], rows, predicted)


def _without_classes(stats: ChannelStatistics) -> ChannelStatistics:
    return ChannelStatistics(stats.count, stats.maximum, stats.mean_values, stats.mean_images)


def stream_channel_statistics(
    model: Model,
    batches: Batches,
    layers: Sequence[str],
    top_k: int,
    relevance: bool = True,
    bar: Callable[[int], None] | None = None,
) -> tuple[dict[str, TopExamples], dict[str, ChannelStatistics]]:
    """One pass of ``batches``: each layer's top examples (:func:`stream_examples`, the same
    as without this) and its :class:`ChannelStatistics` (with class relevance when
    ``relevance`` is asked for and the model gives class scores: a full forward and backward
    pass a batch)."""
    observer = _Observer(model, layers, top_k, relevance)
    found = stream_examples(model, batches, layers, top_k, bar, observer)
    return found, observer.found
