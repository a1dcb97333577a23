"""The parts of an explanation beside the relevance itself: the atlas it reads pictures from,
the pictures it renders instead, the dataset examples of the channels shown and the
semantic dictionary (per location, the channel carrying the most relevance there)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convsight.analysis.dataset_examples import ReceptiveField, crop, receptive_field
from convsight.analysis.streamed_examples import (
    TopExamples,
    stream_examples,
    stream_relevant_examples,
)
from convsight.data.images import ImageStream, load_image_tensor
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis.render import render_channels
from convsight.report import safe_filename
from convsight.studies.atlas.inputs import dataset_images
from convsight.studies.atlas.run import RUN_FILE, parameters_sha256
from convsight.targets import TargetLike

DATASET_BATCH = 16


@dataclass(frozen=True)
class AtlasSource:
    """An atlas folder of the same model: where each layer's channels live in it and the
    preset whose picture is shown (the atlas's last, as its layer pages show)."""

    path: Path
    folders: dict[str, str]
    preset: str

    def picture(self, layer: str, channel: int) -> Path | None:
        """The channel's picture in the atlas, when the atlas rendered it."""
        folder = self.folders.get(layer)
        if folder is None:
            return None
        image = self.path / folder / "img" / f"c{channel}_{safe_filename(self.preset)}.png"
        return image if image.is_file() else None

    def page(self, layer: str, channel: int) -> Path | None:
        """The channel's page in the atlas, when it has one."""
        folder = self.folders.get(layer)
        page = self.path / folder / f"c{channel}.html" if folder is not None else None
        return page if page is not None and page.is_file() else None


def read_atlas(model: Model, atlas: str | os.PathLike) -> AtlasSource:
    """The atlas in folder ``atlas``; one that is not an atlas, or one of another model (its
    weights' fingerprint differs), is refused in one sentence."""
    path = Path(atlas)
    record = path / RUN_FILE
    try:
        run = json.loads(record.read_text(encoding="utf-8"))
        fingerprint = run["model"]["parameters_sha256"]
        folders, presets = dict(run["layer_folders"]), list(run["presets"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConvsightError(
            f"--atlas {path} is not a convsight atlas folder (no readable {RUN_FILE}: "
            f"{type(exc).__name__})"
        ) from None
    if fingerprint != parameters_sha256(model.module):
        name = (run.get("model") or {}).get("name")
        raise ConvsightError(
            f"--atlas {path} is an atlas of another model ({name}, other weights): give the "
            f"atlas of model '{model.card.name}' with these weights"
        )
    return AtlasSource(path.resolve(), folders, presets[-1])


@dataclass
class Picture:
    """A channel's feature visualization (C x H x W in [0, 1]) and where it came from:
    ``"atlas"`` (its file there) or ``"rendered"`` (with ``settings``)."""

    pixels: torch.Tensor
    source: str
    atlas_file: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def channel_pictures(
    model: Model,
    layer: str,
    channels: Sequence[int],
    atlas: AtlasSource | None,
    render: dict[str, Any],
    seed: int,
) -> list[Picture]:
    """Each channel's picture: read from the atlas where it has one, else rendered (all the
    missing ones of the layer in one batch) with ``render`` (``preset`` and overrides)."""
    found: dict[int, Picture] = {}
    for c in channels:
        file = atlas.picture(layer, c) if atlas is not None else None
        if file is not None:
            with Image.open(file) as img:
                pixels = torch.from_numpy(_array(img.convert("RGB"))).permute(2, 0, 1)
            found[c] = Picture(pixels.float() / 255, "atlas", atlas_file=file)
    missing = [c for c in channels if c not in found]
    if missing:
        options = {k: v for k, v in render.items() if k != "preset"}
        result = render_channels(model, layer, missing, render["preset"], seed, **options)
        for row, c in enumerate(missing):
            found[c] = Picture(result.images[row].detach().cpu(), "rendered", settings=render)
    return [found[c] for c in channels]


def _array(img: Image.Image) -> Any:
    import numpy as np

    return np.array(img, dtype=np.uint8)


@dataclass(frozen=True)
class Dataset:
    """The dataset folder's image files (read lazily, a batch at a time)."""

    path: Path
    files: list[Path]


def check_dataset(dataset: str | os.PathLike) -> Dataset:
    """The image files of the folder ``dataset`` (one sentence when it is not one)."""
    return Dataset(Path(dataset), dataset_images(dataset))


@dataclass
class Example:
    """One dataset example of a channel: the image file and pixels, its activation and the
    box (top, left, bottom, right) of the strongest unit's receptive field."""

    file: Path
    value: float
    box: tuple[int, int, int, int]
    pixels: torch.Tensor

    @property
    def patch(self) -> torch.Tensor:
        """The receptive field's patch of the image."""
        return crop(self.pixels, self.box)


ChannelsExamples = dict[str, dict[int, list[Example]]]
"""Per layer and channel shown, its dataset examples (best first)."""


@dataclass
class FoundExamples:
    """The dataset examples of the channels shown: by activation (``active``: the spatial
    maximum), by relevance for the decision's target (``relevant``: gradient x activation of
    its score, summed over space; crops where the relevance is largest) and the files left
    out as unreadable."""

    active: ChannelsExamples
    relevant: ChannelsExamples
    skipped: list[dict[str, str]]


def dataset_examples(
    model: Model,
    dataset: Dataset,
    chosen: dict[str, list[int]],
    top_k: int,
    target: TargetLike = None,
) -> FoundExamples:
    """Per layer and chosen channel the ``top_k`` images of the dataset by the channel's
    spatial maximum and, given ``target``, by its relevance for the target (one streamed pass
    for every layer and both rankings; with a target, a forward and a backward pass per
    batch), with their receptive-field patches (each layer's field measured once)."""
    stream = ImageStream(dataset.files, model.card, DATASET_BATCH, "image of the dataset")
    stream.check()
    by_activation: dict[str, TopExamples] = {}
    by_relevance: dict[str, TopExamples] = {}
    if target is None:
        by_activation = stream_examples(model, _batches(stream), list(chosen), top_k)
    else:
        batches, layers = _batches(stream), list(chosen)
        by_relevance = stream_relevant_examples(
            model, batches, layers, target, top_k, active=by_activation
        )
    found = FoundExamples({}, {}, stream.skipped)
    for layer, channels in chosen.items():
        field_ = receptive_field(model, layer)
        found.active[layer] = _examples(by_activation[layer], channels, stream.kept, field_, model)
        if layer in by_relevance:
            top = by_relevance[layer]
            found.relevant[layer] = _examples(top, channels, stream.kept, field_, model)
    return found


def _examples(
    top: TopExamples, channels: list[int], files: list[Path], field_: ReceptiveField, model: Model
) -> dict[int, list[Example]]:
    """Each channel's top images (``files[index]``) with the receptive field's box at the
    position recorded."""
    found: dict[int, list[Example]] = {}
    for c in channels:
        rows = []
        for index, value, (y, x) in zip(
            top.images[c].tolist(), top.values[c].tolist(), top.positions[c].tolist(), strict=True
        ):
            if index < 0:
                continue
            pixels = load_image_tensor(files[index], model.card)[0]
            rows.append(Example(files[index], float(value), field_.box(int(y), int(x)), pixels))
        found[c] = rows
    return found


def _batches(stream: ImageStream) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The stream's chunks as (indices, pixels), counted over the readable images."""
    seen = 0
    for chunk in stream:
        count = len(chunk.files)
        if count:
            yield torch.arange(seen, seen + count), chunk.pixels
        seen += count


def semantic_dictionary(maps: torch.Tensor) -> torch.Tensor | None:
    """Per location of a layer's relevance maps (C x h x w), the channel carrying the most
    (positive) relevance there; -1 where no channel carries any. None for a vector layer."""
    if maps.dim() != 3:
        return None
    best, channel = maps.max(0)
    return torch.where(best > 0, channel, torch.full_like(channel, -1))
