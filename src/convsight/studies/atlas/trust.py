"""How far to trust an atlas channel's picture, from the layer's streamed dataset statistics
(``trust.npz``, :class:`~convsight.analysis.channel_statistics.ChannelStatistics`):

- *silent*: the channel's activation is never positive on the dataset (its maximum over every
  image and position is at most 0): its picture is rendered but is not a feature of the data;
- *reach* and *rank* (:class:`convsight.analysis.trust.Reach`, defined there once): the
  objective the atlas renders (the channel's mean activation), on the final picture as shown
  (at the render's size), over the mean of the same objective on the channel's top-k dataset
  images (at the model's input size); None where that mean is not above 0 (a ratio to a
  non-positive mean says nothing); and the place the picture would take among all dataset
  images by that objective (1: above all; ties count for the picture). The rank is exact
  when the picture falls within the kept top-k, or when the dataset holds at most
  :data:`~convsight.analysis.streamed_examples.SAMPLE` images (each image's mean is then
  kept); otherwise the images above it are estimated from the uniform sample of that many
  images (:func:`images_above`; ``rank_exact`` false, shown as "≈");
- the classes the channel carries most relevance for: its mean gradient x activation relevance
  for the predicted class over the images predicted as each class, the top
  :data:`TOP_CLASSES` classes (models with class scores).

Without a dataset nothing is claimed: ``silent`` and ``maximum`` are None ("unknown").
With a dataset, ``trust["path"]`` is the path similarity of the main preset's picture
(:mod:`convsight.studies.atlas.picture_paths`); the pages show "off-path" when its
``flagged`` is true.
"""

from __future__ import annotations

from typing import Any

import torch

from convsight.analysis.channel_statistics import ChannelStatistics
from convsight.analysis.streamed_examples import TopExamples
from convsight.analysis.trust import Reach
from convsight.models import ModelCard

TRUST_FILE = "trust.npz"  # a layer's trust statistics, found with its examples
TOP_CLASSES = 5
OBJECTIVE = "the channel's mean activation (the atlas's render objective)"
NO_DATASET = "no dataset: whether the channel is silent, and its reach and rank, are unknown"


def trust_arrays(stats: ChannelStatistics, top: TopExamples) -> dict[str, torch.Tensor]:
    """What ``stats.npz`` holds: each channel's maximum, its top-k spatial means and their
    images, the spatial means of the sampled images (C x S) and, with class relevance, the
    relevance sums (C x K) and images per predicted class (K)."""
    k = min(stats.top_k, stats.count)
    sampled = top.sample_images.argsort()
    arrays = {
        "maximum": stats.maximum,
        "mean_top_values": stats.mean_values[:, :k],
        "mean_top_images": stats.mean_images[:, :k],
        "sample_means": top.sample_means[sampled].T.contiguous(),
        "images": torch.tensor(stats.count),
    }
    if stats.class_sum is not None and stats.class_count is not None:
        arrays.update(class_relevance_sum=stats.class_sum, class_images=stats.class_count)
    return arrays


def images_above(
    value: float, top: torch.Tensor, sample: torch.Tensor, count: int
) -> tuple[int, bool]:
    """How many of ``count`` images, whose top values are ``top`` (descending) and whose
    uniform sample is ``sample``, score above ``value``; whether that is exact (see the
    module's docstring: beyond the kept top-k of a large dataset it is estimated from the
    sample, and at least ``len(top)``)."""
    above = int((top > value).sum())
    if above < len(top) or count <= len(top):
        return above, True
    sampled = int((sample > value).sum())
    if len(sample) >= count:
        return sampled, True
    return max(round(count * sampled / max(len(sample), 1)), len(top)), False


def render_reach(
    value: float, top: torch.Tensor, sample: torch.Tensor, count: int
) -> tuple[Reach, bool]:
    """The :class:`~convsight.analysis.trust.Reach` of a picture whose objective is ``value``
    (ratio to the top values' mean, rank among ``count`` images, :func:`images_above`) and
    whether its rank is exact."""
    above, exact = images_above(value, top, sample, count)
    return Reach.of_counts(value, top, above, count), exact


def render_rank(
    value: float, top: torch.Tensor, sample: torch.Tensor, count: int
) -> tuple[int, bool]:
    """The rank ``value`` would take among ``count`` images (1 + :func:`images_above`);
    whether it is exact."""
    reached, exact = render_reach(value, top, sample, count)
    return reached.rank, exact


def channel_trust(
    arrays: dict[str, torch.Tensor] | None, channel: int, objectives: dict[str, float]
) -> dict[str, Any]:
    """One channel's trust record: silent, maximum and, per preset whose final ``objectives``
    are given, the render's objective, reach and rank (see the module's docstring)."""
    if arrays is None:
        presets = {p: {"render": v, "reach": None, "rank": None} for p, v in objectives.items()}
        return {"objective": OBJECTIVE, "silent": None, "maximum": None, "note": NO_DATASET,
                "presets": presets}  # fmt: skip
    maximum = float(arrays["maximum"][channel])
    top = arrays["mean_top_values"][channel].float()
    count = int(arrays["images"])
    presets = {}
    for preset, value in objectives.items():
        reached, exact = render_reach(value, top, arrays["sample_means"][channel].float(), count)
        presets[preset] = {"render": value, "reach": reached.ratio, "rank": reached.rank,
                           "rank_exact": exact}  # fmt: skip
    return {
        "objective": OBJECTIVE,
        "silent": maximum <= 0,
        "maximum": maximum,
        "top_k_mean": Reach.of_counts(0.0, top, 0, count).top_mean,  # as every reach takes it
        "top_k": len(top),
        "images": count,
        "presets": presets,
    }


def relevant_classes(
    arrays: dict[str, torch.Tensor] | None, channel: int, card: ModelCard
) -> dict[str, Any]:
    """The :data:`TOP_CLASSES` classes with the largest mean relevance of the channel over
    the images predicted as them (with labels and image counts), or a note why none."""
    if arrays is None:
        return {"classes": [], "note": "no dataset"}
    if "class_relevance_sum" not in arrays:
        why = "the model gives no class scores" if not card.num_classes or card.features_only else (
            "class relevance was not computed for this atlas"
        )  # fmt: skip
        return {"classes": [], "note": why}
    counts = arrays["class_images"].long()
    seen = (counts > 0).nonzero().flatten()
    means = arrays["class_relevance_sum"][channel][seen] / counts[seen].double()
    order = means.argsort(descending=True, stable=True)[:TOP_CLASSES]
    classes = [
        {
            "class": int(seen[i]),
            "label": card.label(int(seen[i])),
            "mean_relevance": float(means[i]),
            "images": int(counts[seen[i]]),
        }
        for i in order.tolist()
    ]
    return {"classes": classes, "note": None}


def layer_trust(rows: list[dict[str, Any]], preset: str) -> dict[str, Any]:
    """A layer's trust summary from its channel rows: the silent channels and the off-path
    ones (each None: unknown) and per channel its maximum, silence, the ``preset``'s reach
    and rank and the path flag (off-path None also where no layer lies below to compare)."""
    known = [r for r in rows if r["trust"].get("silent") is not None]
    silent = [r["index"] for r in known if r["trust"]["silent"]] if known else None
    measured = [r for r in rows if (r["trust"].get("path") or {}).get("layers")]
    off_path = [r["index"] for r in measured if r["trust"]["path"].get("flagged")]
    channels = []
    for r in rows:
        t = r["trust"]
        shown = t.get("presets", {}).get(preset, {})
        path = t.get("path")
        channels.append(
            {
                "channel": r["index"],
                "silent": t.get("silent"),
                "maximum": t.get("maximum"),
                "reach": shown.get("reach"),
                "rank": shown.get("rank"),
                "rank_exact": shown.get("rank_exact"),
                "off_path": bool(path.get("flagged")) if isinstance(path, dict) else None,
            }
        )
    return {
        "silent": silent,
        "off_path": off_path if measured else None,
        "preset": preset,
        "channels": channels,
    }
