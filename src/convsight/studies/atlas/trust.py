"""How far to trust an atlas channel's picture, from the layer's streamed dataset statistics
(``trust.npz``, :class:`~convsight.analysis.streamed_trust.ChannelTrust`):

- *silent*: the channel's activation is never positive on the dataset (its maximum over every
  image and position is at most 0): its picture is rendered but is not a feature of the data;
- *reach*: the objective the atlas renders (the channel's mean activation), on the final
  picture as shown (at the render's size), over the mean of the same objective on the
  channel's top-k dataset images (at the model's input size); None where that mean is not
  above 0 (a ratio to a non-positive mean says nothing);
- *rank*: the place the picture would take among all dataset images by that objective (1:
  above all; ties count for the picture). Exact when the picture falls within the kept top-k,
  or when the dataset holds at most :data:`~convsight.analysis.streamed_examples.SAMPLE`
  images (each image's mean is then kept); otherwise estimated from the uniform sample of
  that many images (``rank_exact`` false, shown as "≈");
- the classes the channel carries most relevance for: its mean gradient x activation relevance
  for the predicted class over the images predicted as each class, the top
  :data:`TOP_CLASSES` classes (models with class scores).

Without a dataset nothing is claimed: ``silent`` and ``maximum`` are None ("unknown").
A later path-similarity check may add ``trust["path"]``; the pages show "off-path" when its
``flagged`` is true.
"""

from __future__ import annotations

from typing import Any

import torch

from convsight.analysis.streamed_examples import TopExamples
from convsight.analysis.streamed_trust import ChannelTrust
from convsight.models import ModelCard

TRUST_FILE = "trust.npz"  # a layer's trust statistics, found with its examples
TOP_CLASSES = 5
OBJECTIVE = "the channel's mean activation (the atlas's render objective)"
NO_DATASET = "no dataset: whether the channel is silent, and its reach and rank, are unknown"


def trust_arrays(trust: ChannelTrust, top: TopExamples) -> dict[str, torch.Tensor]:
    """What ``trust.npz`` holds: each channel's maximum, its top-k spatial means and their
    images, the spatial means of the sampled images (C x S) and, with class relevance, the
    relevance sums (C x K) and images per predicted class (K)."""
    k = min(trust.top_k, trust.count)
    sampled = top.sample_images.argsort()
    arrays = {
        "maximum": trust.maximum,
        "mean_top_values": trust.mean_values[:, :k],
        "mean_top_images": trust.mean_images[:, :k],
        "sample_means": top.sample_means[sampled].T.contiguous(),
        "images": torch.tensor(trust.count),
    }
    if trust.class_sum is not None and trust.class_count is not None:
        arrays.update(class_relevance_sum=trust.class_sum, class_images=trust.class_count)
    return arrays


def render_rank(
    value: float, top: torch.Tensor, sample: torch.Tensor, count: int
) -> tuple[int, bool]:
    """The rank ``value`` would take among ``count`` images whose top values are ``top``
    (descending) and whose uniform sample is ``sample``: 1 + the images above it; whether it
    is exact (see the module's docstring)."""
    above = int((top > value).sum())
    if above < len(top) or count <= len(top):
        return 1 + above, True
    sampled = int((sample > value).sum())
    if len(sample) >= count:
        return 1 + sampled, True
    return 1 + max(round(count * sampled / max(len(sample), 1)), len(top)), False


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
    natural = float(top.mean()) if len(top) else float("nan")
    presets = {}
    for preset, value in objectives.items():
        rank, exact = render_rank(value, top, arrays["sample_means"][channel].float(), count)
        reach = value / natural if natural > 0 else None
        presets[preset] = {"render": value, "reach": reach, "rank": rank, "rank_exact": exact}
    return {
        "objective": OBJECTIVE,
        "silent": maximum <= 0,
        "maximum": maximum,
        "top_k_mean": natural,
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
    """A layer's trust summary from its channel rows: the silent channels (None: unknown) and
    per channel its maximum, silence, the ``preset``'s reach and rank and the path flag."""
    known = [r for r in rows if r["trust"].get("silent") is not None]
    silent = [r["index"] for r in known if r["trust"]["silent"]] if known else None
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
    return {"silent": silent, "preset": preset, "channels": channels}
