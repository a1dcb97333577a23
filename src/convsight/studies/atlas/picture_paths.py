"""Path similarity of the atlas's pictures (issue 31; Geirhos et al. 2023, see
:class:`convsight.analysis.trust.PathSimilarity`): with a dataset, each rendered channel's
``trust["path"]`` compares the layers below it (:func:`~convsight.analysis.trust.path_layers`)
on three kinds of images:

- the channel's final picture of the main (last) preset as shown, at the render's size,
  untransformed, as its reach is evaluated (:func:`~convsight.studies.atlas.tasks.
  final_objectives`);
- its top-k dataset images by its mean activation (the layer's ``trust.npz``), at the model's
  input size;
- a fixed random sample of the dataset (:func:`~convsight.analysis.trust_stream.random_sample`).

A flagged picture (closer to random images than to its own top images over the last layers)
is shown "off-path". The dataset images are decoded and run :data:`PATH_BATCH` at a time and
only their channel means are kept. Channels rendered by an earlier run that did not measure
paths get theirs from the picture's PNG (8-bit, taken back to the render's size):
``trust["path_source"]`` says which. Without a dataset ``trust["path"]`` is None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convsight.analysis.trust import compare_paths, layer_means, path_layers
from convsight.analysis.trust_stream import random_sample
from convsight.report import safe_filename, write_json
from convsight.studies.atlas.inputs import AtlasJob

PATH_BATCH = 16  # dataset images a forward of the path measure
FROM_RENDER = "the final picture (fp32)"
FROM_PNG = "the picture's PNG (8-bit; rendered by an earlier run)"


class LayerPaths:
    """The path similarity of a layer's pictures: its compared layers, the random sample's
    mean channel vectors (taken once, when first needed) and the channels' top images."""

    def __init__(self, job: AtlasJob, layer: str, arrays: dict[str, torch.Tensor]) -> None:
        assert job.dataset is not None  # paths are measured only with a dataset
        self.model, self.layer, self.data = job.model, layer, job.dataset
        self.top = arrays["mean_top_images"]
        self.layers = path_layers(job.model, layer)
        self.random_images = random_sample(len(job.dataset))
        self._random: dict[str, torch.Tensor] | None = None

    def image_means(self, indices: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """Each dataset image's channel means at the compared layers (C per layer)."""
        found: dict[int, dict[str, torch.Tensor]] = {}
        for first in range(0, len(indices), PATH_BATCH):
            chunk = indices[first : first + PATH_BATCH]
            means = layer_means(self.model, self.data.load(chunk), self.layers)
            for row, index in enumerate(chunk):
                found[index] = {n: means[n][row] for n in self.layers}
        return found

    def random(self) -> dict[str, torch.Tensor]:
        """The random sample's mean channel vector per compared layer."""
        if self._random is None:
            found = self.image_means(self.random_images)
            self._random = _mean([found[i] for i in self.random_images], self.layers)
        return self._random

    def top_images(self, channel: int) -> list[int]:
        """The channel's top dataset images by its mean activation, best first."""
        return [i for i in self.top[channel].tolist() if i >= 0]

    def of(self, channels: list[int], renders: torch.Tensor) -> list[dict[str, Any]]:
        """Each channel's :meth:`PathSimilarity.to_json` from its picture (row of ``renders``,
        pixels at the render's size): the channels' top images decoded once, in batches."""
        shown = layer_means(self.model, renders, self.layers, resize=False)
        wanted = sorted({i for c in channels for i in self.top_images(c)})
        images = self.image_means(wanted)
        found = []
        for row, channel in enumerate(channels):
            top = _mean([images[i] for i in self.top_images(channel)], self.layers)
            mine = {n: shown[n][row].double() for n in self.layers}
            found.append(compare_paths(self.layers, mine, top, self.random()).to_json())
        return found

    def describe(self) -> dict[str, Any]:
        """What the paths were measured on (for ``atlas.json``)."""
        return {
            "layers": self.layers,
            "top_k": int(self.top.shape[1]),
            "random_images": [self.data.names[i] for i in self.random_images],
        }


def _mean(rows: list[dict[str, torch.Tensor]], layers: list[str]) -> dict[str, torch.Tensor]:
    """The mean of ``rows`` per layer, in float64 (as :func:`path_similarity` takes it)."""
    return {n: torch.stack([r[n] for r in rows]).double().mean(0) for n in layers}


def main_preset(job: AtlasJob) -> str:
    """The preset whose picture the layer page shows and whose path is measured."""
    return job.presets[-1]


def fill_paths(job: AtlasJob, layer: str, folder: Path, out: Path, paths: LayerPaths) -> int:
    """Measure the path of every chosen channel of ``layer`` whose record has none (rendered
    by an earlier run) from its picture's PNG, and write the record back; how many."""
    records = {}
    for c in job.chosen[layer]:
        record = json.loads((folder / "records" / f"c{c}.json").read_text("utf-8"))
        if isinstance(record.get("trust"), dict) and record["trust"].get("path") is None:
            records[c] = record
    todo = list(records)
    for first in range(0, len(todo), job.batch):
        chunk = todo[first : first + job.batch]
        pictures = torch.stack([read_picture(job, folder, c) for c in chunk])
        for channel, path in zip(chunk, paths.of(chunk, pictures), strict=True):
            records[channel]["trust"].update(path=path, path_source=FROM_PNG)
            write_json(folder / "records" / f"c{channel}.json", records[channel], within=out)
    return len(todo)


def read_picture(job: AtlasJob, folder: Path, channel: int) -> torch.Tensor:
    """A channel's main-preset picture (C x H x W in [0, 1]) from its PNG, taken back to the
    render's size (the PNG enlarges it by a whole factor, nearest neighbour)."""
    preset = main_preset(job)
    with Image.open(folder / "img" / f"c{channel}_{safe_filename(preset)}.png") as image:
        pixels = np.asarray(image.convert("RGB" if job.model.card.channels == 3 else "L"))
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    height = job.settings[preset].size or job.model.card.input_size[0]
    step = max(1, pixels.shape[0] // height)
    shown = np.ascontiguousarray(pixels[::step, ::step])
    return torch.from_numpy(shown).permute(2, 0, 1).float() / 255.0
