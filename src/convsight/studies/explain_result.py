"""What :func:`~convsight.studies.explain.explain` returns (:class:`ExplainResult`) and its
files: ``explain.json`` (:func:`explain_json`), ``explain.npz``, the
pictures under ``img/`` and the page ``explain.html``. File names come from the layers only
through :func:`~convsight.report.files.unique_names`, and every file stays inside ``out``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.Image import Resampling

import convsight
from convsight.analysis.channel_relevance import ChannelRelevance
from convsight.report import unique_names, write_json, write_npz
from convsight.report.files import prepare_out_dir
from convsight.report.html import write_page
from convsight.report.images import examples_strip, write_image, write_pil
from convsight.report.notebook import Tile
from convsight.report.overlays import overlay
from convsight.studies.explain_parts import Example, Picture
from convsight.studies.results import Result


@dataclass
class ExplainedChannel:
    """One channel shown: its signed share and relevance, its conditional heatmap over the
    photo (H x W), its picture, its dataset examples (``examples``: most active; ``relevant``:
    most relevant for the decision's class) and its page in the atlas (if any)."""

    channel: int
    share: float
    relevance: float
    heatmap: torch.Tensor
    picture: Picture
    examples: list[Example] | None = None
    atlas_page: Path | None = None
    relevant: list[Example] | None = None


@dataclass
class ExplainedLayer:
    """One layer: its relevance maps, each channel's relevance and share, the channels
    shown (top by |share|) and the semantic dictionary (h x w channel indices, -1: none)."""

    name: str
    total: float
    relevance: torch.Tensor
    share: torch.Tensor
    channels: list[ExplainedChannel]
    dictionary: torch.Tensor | None


@dataclass(kw_only=True)
class ExplainResult(Result):
    """Why the model decided what it did on one photo: the prediction, the input heatmap,
    per layer the channels that carried the decision, and how it was computed (``method``
    and ``method_reason``)."""

    model: str
    weights: str | None
    image: Path
    pixels: torch.Tensor
    prediction: list[tuple[int, str, float]]
    relevance: ChannelRelevance
    method_reason: str
    layers: list[ExplainedLayer]
    atlas: Path | None = None
    dataset: Path | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    seed: int = 0

    @property
    def method(self) -> str:
        """``crp`` or ``grad_x_act``."""
        return self.relevance.method

    def tiles(self) -> list[Tile]:
        """The photo, its heatmap, then per layer each channel's heatmap and picture."""
        tiles = [
            Tile(self.pixels, self.image.name),
            Tile(overlay(self.pixels, self.relevance.heatmap), f"{self.method}: {self.target}"),
        ]
        for layer in self.layers:
            for entry in layer.channels:
                caption = f"{layer.name} c{entry.channel} share {entry.share:+.2f}"
                tiles.append(Tile(overlay(self.pixels, entry.heatmap), caption))
                tiles.append(Tile(entry.picture.pixels, f"{caption} ({entry.picture.source})"))
        return tiles

    @property
    def target(self) -> str:
        return self.relevance.target

    def facts(self) -> list[tuple[str, Any]]:
        top = self.prediction[0] if self.prediction else None
        return [
            ("model", self.model),
            ("image", str(self.image)),
            ("predicted", f"{top[1]} ({top[2]:.2f})" if top else "–"),
            ("target", self.target),
            ("method", f"{self.method}: {self.method_reason}"),
            *((layer.name, _channel_list(layer)) for layer in self.layers),
        ]

    def to_json(self) -> dict[str, Any]:
        return explain_json(self)

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write ``explain.html``, ``explain.json``, ``explain.npz`` and the pictures."""
        self.files = write_explain_files(prepare_out_dir(out), self)
        return self.files


def _channel_list(layer: ExplainedLayer) -> str:
    return ", ".join(f"c{e.channel} {e.share:+.2f}" for e in layer.channels)


PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 215, 0),
]  # fmt: skip
OTHER, NONE = (150, 150, 150), (0, 0, 0)
SHOWN = 224  # the side of the pictures over the photo


def colour(i: int) -> tuple[int, int, int]:
    """The dictionary's colour of the ``i``-th channel shown."""
    return PALETTE[i % len(PALETTE)]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def layer_dirs(result: ExplainResult) -> list[str]:
    """Each layer's folder under ``img/`` (safe and distinct)."""
    return unique_names([layer.name for layer in result.layers])


def _channel_files(folder: str, entry: ExplainedChannel) -> dict[str, str | None]:
    base = f"img/{folder}/c{entry.channel}"
    return {
        "heatmap": f"{base}_heatmap.png",
        "picture": f"{base}_picture.png",
        "examples": f"{base}_examples.png" if entry.examples else None,
        "relevant_examples": f"{base}_relevant.png" if entry.relevant else None,
    }


def _atlas_page(result: ExplainResult, entry: ExplainedChannel) -> str | None:
    if entry.atlas_page is None or result.atlas is None:
        return None
    return entry.atlas_page.relative_to(result.atlas).as_posix()


def _channel_json(result: ExplainResult, folder: str, entry: ExplainedChannel) -> dict[str, Any]:
    picture = entry.picture
    return {
        "channel": entry.channel,
        "share": entry.share,
        "relevance": entry.relevance,
        "files": _channel_files(folder, entry),
        "picture": {
            "source": picture.source,
            "atlas_file": (
                picture.atlas_file.relative_to(result.atlas).as_posix()
                if picture.atlas_file is not None and result.atlas is not None
                else None
            ),
            "settings": picture.settings or None,
        },
        "examples": _examples_json(entry.examples),
        "atlas_page": _atlas_page(result, entry),
        "relevant_examples": _examples_json(entry.relevant),
    }


def _examples_json(examples: list[Example] | None) -> list[dict[str, Any]] | None:
    """Each example's file, value (activation, or relevance) and receptive-field box."""
    if examples is None:
        return None
    return [{"image": str(e.file), "value": e.value, "box": list(e.box)} for e in examples]


def dictionary_legend(layer: ExplainedLayer) -> dict[str, Any] | None:
    """Per channel shown its colour and how many locations it carries the most relevance
    at; the locations of other channels and of none."""
    if layer.dictionary is None:
        return None
    where = layer.dictionary
    shown = [e.channel for e in layer.channels]
    counts = [int((where == c).sum()) for c in shown]
    legend = [
        {"channel": c, "colour": _hex(colour(i)), "locations": n}
        for i, (c, n) in enumerate(zip(shown, counts, strict=True))
    ]
    none = int((where < 0).sum())
    counted = sum(counts)
    return {
        "size": list(where.shape),
        "legend": legend,
        "other_locations": int(where.numel()) - none - counted,
        "no_relevance_locations": none,
    }


def explain_json(result: ExplainResult) -> dict[str, Any]:
    """What ``explain.json`` holds."""
    found = result.relevance
    dirs = layer_dirs(result)
    layers = []
    for folder, layer in zip(dirs, result.layers, strict=True):
        dictionary = dictionary_legend(layer)
        if dictionary is not None:
            dictionary["file"] = f"img/{folder}/dictionary.png"
        layers.append(
            {
                "name": layer.name,
                "channels": int(layer.share.numel()),
                "total": layer.total,
                "top": [_channel_json(result, folder, e) for e in layer.channels],
                "dictionary": dictionary,
            }
        )
    return {
        "convsight": convsight.__version__,
        "model": result.model,
        "weights": result.weights,
        "image": str(result.image),
        "prediction": [
            {"class": c, "label": label, "probability": p} for c, label, p in result.prediction
        ],
        "method": found.method,
        "method_reason": result.method_reason,
        "composite": found.composite,
        "canonizer": found.canonizer,
        "target": found.target,
        "classes": found.classes,
        "score": found.score,
        "input_relevance": float(found.heatmap.sum()),
        "files": {"input": "img/input.png", "heatmap": "img/heatmap.png", "arrays": "explain.npz"},
        "layers": layers,
        "atlas": str(result.atlas) if result.atlas is not None else None,
        "dataset": str(result.dataset) if result.dataset is not None else None,
        "dataset_skipped": result.skipped,
        "seed": result.seed,
    }


def _dictionary_picture(result: ExplainResult, layer: ExplainedLayer) -> Image.Image:
    """The semantic dictionary over the photo: each location in its channel's colour."""
    assert layer.dictionary is not None
    where = layer.dictionary.numpy()
    rgb = np.zeros((*where.shape, 3), dtype=np.uint8)
    rgb[:] = OTHER
    rgb[where < 0] = NONE
    for i, entry in enumerate(layer.channels):
        rgb[where == entry.channel] = colour(i)
    photo = _photo(result.pixels, SHOWN)
    colours = Image.fromarray(rgb).resize(photo.size, Resampling.NEAREST)
    return Image.blend(photo, colours, 0.6)


def _photo(pixels: torch.Tensor, side: int) -> Image.Image:
    array = (pixels.float().clamp(0, 1).expand(3, -1, -1) * 255).round().byte()
    img = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()), "RGB")
    return img.resize((side, side * img.height // img.width), Resampling.BILINEAR)


def _heat_picture(pixels: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(overlay(pixels, heat)).permute(2, 0, 1).float() / 255


def _write_layer(out: Path, result: ExplainResult, folder: str, layer: ExplainedLayer) -> list:
    written = []
    for entry in layer.channels:
        files = _channel_files(folder, entry)
        heat = _heat_picture(result.pixels, entry.heatmap)
        written.append(write_image(out / str(files["heatmap"]), heat, SHOWN // 2, within=out))
        written.append(write_image(out / str(files["picture"]), entry.picture.pixels, 112, out))
        for key, shown in (("examples", entry.examples), ("relevant_examples", entry.relevant)):
            if files[key] is not None and shown:
                strip = examples_strip([e.pixels for e in shown], [e.box for e in shown])
                written.append(write_pil(out / str(files[key]), strip, within=out))
    if layer.dictionary is not None:
        picture = _dictionary_picture(result, layer)
        written.append(write_pil(out / "img" / folder / "dictionary.png", picture, within=out))
    return written


def _arrays(result: ExplainResult) -> dict[str, Any]:
    arrays: dict[str, Any] = {"pixels": result.pixels, "heatmap": result.relevance.heatmap}
    for i, layer in enumerate(result.layers):
        arrays[f"layer{i}_relevance"] = layer.relevance
        arrays[f"layer{i}_share"] = layer.share
        arrays[f"layer{i}_channels"] = torch.tensor([e.channel for e in layer.channels])
        arrays[f"layer{i}_heatmaps"] = torch.stack([e.heatmap for e in layer.channels])
        if layer.dictionary is not None:
            arrays[f"layer{i}_dictionary"] = layer.dictionary
        for key, attr in (("examples", "examples"), ("relevant", "relevant")):
            found = [getattr(e, attr) for e in layer.channels]
            if any(rows is not None for rows in found):
                values, boxes = _example_arrays(found)
                arrays[f"layer{i}_{key}_values"], arrays[f"layer{i}_{key}_boxes"] = values, boxes
    return arrays


def _example_arrays(found: list[list[Example] | None]) -> tuple[np.ndarray, np.ndarray]:
    """The examples' values (channels x k, NaN where a channel has fewer) and boxes
    (channels x k x 4, -1 there)."""
    k = max((len(rows or []) for rows in found), default=0)
    values = np.full((len(found), k), np.nan)
    boxes = np.full((len(found), k, 4), -1, dtype=np.int64)
    for i, rows in enumerate(found):
        for j, e in enumerate(rows or []):
            values[i, j], boxes[i, j] = e.value, e.box
    return values, boxes


def write_explain_files(out: Path, result: ExplainResult) -> list[Path]:
    """The pictures, ``explain.npz``, ``explain.json`` and ``explain.html`` in ``out``."""
    written = [
        write_image(out / "img" / "input.png", result.pixels, SHOWN // 2, within=out),
        write_image(
            out / "img" / "heatmap.png",
            _heat_picture(result.pixels, result.relevance.heatmap),
            SHOWN // 2,
            within=out,
        ),
    ]
    for folder, layer in zip(layer_dirs(result), result.layers, strict=True):
        written += _write_layer(out, result, folder, layer)
    written.append(write_npz(out / "explain.npz", **_arrays(result)))
    data = result.to_json()
    written.append(write_json(out / "explain.json", data))
    links = _atlas_links(out, result)
    page = write_page(
        out / "explain.html", "explain.html", out, data=data, links=links, version=data["convsight"]
    )
    return [*written, page]


def _atlas_links(out: Path, result: ExplainResult) -> dict[str, str]:
    """Each channel's atlas page relative to ``out`` (``layer/channel`` keys)."""
    links = {}
    for layer in result.layers:
        for entry in layer.channels:
            if entry.atlas_page is not None:
                relative = os.path.relpath(entry.atlas_page, out.resolve())
                links[f"{layer.name}/{entry.channel}"] = Path(relative).as_posix()
    return links
