"""``convsight projections``: each channel's top dataset patches beside the DeconvNet projection
of their strongest unit (:mod:`convsight.analysis.projections`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from convsight.analysis.dataset_examples import ChannelExamples, receptive_field
from convsight.analysis.projections import (
    HIGH_FREQUENCY,
    PAPER,
    ChannelProjections,
    display,
    high_frequency_share,
    project_examples,
    tiles,
)
from convsight.analysis.streamed_examples import TopExamples, stream_examples
from convsight.data.images import ImageStream, load_image_tensor
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to
from convsight.models import Model
from convsight.optvis.channels import parse_channels
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, safe_filename, write_json, write_npz
from convsight.report.images import write_pil
from convsight.report.notebook import Tile
from convsight.runtime import seed_everything
from convsight.studies.atlas.inputs import dataset_images
from convsight.studies.results import Result

NEAR_NOISE = 0.9  # a layer's projections this close to white noise's share are called noise
BATCH_SIZE = 16  # images decoded and run at a time while finding the top examples


def check_projection_inputs(
    model: Model, layer: str, channels: str | Sequence[int], top_k: int
) -> list[int]:
    """The channels of ``layer`` to project; a bad layer, channel or ``top_k`` fails in one
    sentence (one small forward)."""
    if top_k < 1:
        raise ConvsightError(f"--top-k must be at least 1, not {top_k}")
    check_layers(model.module, [layer])
    with torch.no_grad():
        out = forward_to(model.module, model.example_input(), [layer])[layer]
    if out.dim() != 4:
        raise ConvsightError(f"layer '{layer}' outputs {tuple(out.shape[1:])}, not channel maps")
    text = channels if isinstance(channels, str) else ",".join(str(int(c)) for c in channels)
    try:
        return parse_channels(text, limit=int(out.shape[1]))
    except ConvsightError as exc:
        raise ConvsightError(f"{exc} (--channels, layer '{layer}')") from None


@dataclass(frozen=True)
class ProjectionsRequest:
    """What :func:`write_projections` projects: the channels of ``layer`` (``"0-3"`` or a
    list), the image folder their top ``top_k`` examples are found in, the output folder
    (None: nothing written) and the seed. ``weights`` says where the model came from
    (recorded, not read)."""

    layer: str
    dataset: str | os.PathLike
    channels: str | Sequence[int] = "0-3"
    top_k: int = 9
    out: str | os.PathLike | None = None
    seed: int = 0
    show_progress: bool = True
    weights: str | os.PathLike | None = None


@dataclass(kw_only=True)
class ProjectionsResult(Result):
    """The projections: per channel its top examples and their DeconvNet projections
    (``examples``, ``projections``: the arrays of ``projections.npz``), one JSON row per
    channel, the layer's high-frequency summary and the settings; ``files``: the PNG per
    channel, ``projections.npz`` and ``projections.json``."""

    model: str
    weights: str | None
    layer: str
    method: str
    dataset: str
    dataset_size: int
    skipped_images: list[dict[str, str]]
    top_k: int
    seed: int
    receptive_field: dict[str, Any]
    rectifier_calls: int
    display: str
    high_frequency: dict[str, Any]
    channels: list[dict[str, Any]]
    seconds: float
    examples: ChannelExamples
    projections: list[ChannelProjections]

    def to_json(self) -> dict[str, Any]:
        """What ``projections.json`` holds."""
        arrays = ("files", "examples", "projections")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in arrays}

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Per channel a PNG (patches row, projections row), ``projections.npz`` and
        ``projections.json``."""
        folder = prepare_out_dir(out)
        written: list[Path] = []
        for item, row in zip(self.projections, self.channels, strict=True):
            tiled = tiles([item.patches, [display(c) for c in item.projections.crops()]])
            written.append(write_pil(folder / row["grid"], tiled, within=folder))
        written.append(_write_arrays(folder, self.examples, self.projections))
        written.append(write_json(folder / "projections.json", self.to_json(), within=folder))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """Per channel, each top example's patch (with the channel's score) beside its
        projection; a patch clipped away entirely is left out."""
        shown = []
        for item in self.projections:
            crops = item.projections.crops()
            for rank, (patch, crop) in enumerate(zip(item.patches, crops, strict=True)):
                if min(patch.shape[-2:]) == 0:
                    continue
                name = f"c{item.channel} #{rank + 1}"
                shown.append(Tile(patch, f"{name}: {item.scores[rank]:.3g}"))
                shown.append(Tile(display(crop), f"{name} projection"))
        return shown

    def facts(self) -> list[tuple[str, Any]]:
        """The model, layer, channels, dataset, how textured the projections are, the time."""
        texture = self.high_frequency
        share = texture["mean_share"]
        return [
            ("model", self.model),
            ("layer", self.layer),
            ("channels", ", ".join(str(row["channel"]) for row in self.channels)),
            ("dataset", f"{self.dataset} ({self.dataset_size} images)"),
            ("top_k", self.top_k),
            ("high-frequency share", "n/a" if share is None else f"{share:.3g}"),
            ("near white noise", texture["near_white_noise"]),
            ("seconds", round(self.seconds, 2)),
        ]


def write_projections(model: Model, request: ProjectionsRequest) -> ProjectionsResult:
    """For each channel: its top-``top_k`` dataset images, and the DeconvNet projection of each
    one's strongest unit. Writes per channel a PNG (patches row, projections row), and
    ``projections.npz`` and ``projections.json`` for all into ``request.out``
    (:meth:`ProjectionsResult.save`; None: nothing written). Every input is checked (the
    dataset read) before ``out`` is created."""
    r, layer = request, request.layer
    start = time.perf_counter()
    seed_everything(r.seed)
    chosen = check_projection_inputs(model, layer, r.channels, r.top_k)
    examples, files, skipped = _streamed_examples(model, r, chosen)
    names = [str(path.relative_to(Path(r.dataset))) for path in files]
    out = None if r.out is None else prepare_out_dir(r.out)
    field = receptive_field(model, layer)
    found = project_examples(model, _decoder(model, files), examples, field)
    rows = [
        _channel_row(item, safe_filename(f"{layer}-c{item.channel}.png"), names) for item in found
    ]
    result = ProjectionsResult(
        model=model.card.name,
        weights=str(r.weights) if r.weights else None,
        layer=layer,
        method=f"DeconvNet projection of each image's strongest unit ({PAPER})",
        dataset=str(r.dataset),
        dataset_size=len(names),
        skipped_images=skipped,
        top_k=r.top_k,
        seed=r.seed,
        receptive_field={"size": field.size, "stride": field.stride, "offset": field.offset},
        rectifier_calls=sum(p.projections.rectifier_calls for p in found),
        display="each projection shown as 0.5 + x / (2 max|x|), per image (grey is 0)",
        high_frequency=_texture_summary(rows),
        channels=rows,
        seconds=time.perf_counter() - start,
        examples=examples,
        projections=found,
    )
    if out is not None:
        result.save(out)
    return result


def _streamed_examples(
    model: Model, request: ProjectionsRequest, chosen: list[int]
) -> tuple[ChannelExamples, list[Path], list[dict[str, str]]]:
    """One streamed pass over the dataset (:func:`stream_examples`, a batch of images decoded
    at a time): the top examples of the ``chosen`` channels, the readable files (image ``i``
    is ``files[i]``) and the files left out with the reason. No readable image fails here."""
    r, files = request, dataset_images(request.dataset)
    stream = ImageStream(files, model.card, BATCH_SIZE, "image of the dataset")
    with progress_bar(r.show_progress) as bar:
        task = bar.add_task(f"dataset through {r.layer}", total=len(files), status="")

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            seen = 0
            for chunk in stream:
                bar.update(task, advance=len(chunk.files) + len(chunk.skipped))
                if chunk.files:
                    yield torch.arange(seen, seen + len(chunk.files)), chunk.pixels
                seen += len(chunk.files)

        found = stream_examples(model, batches(), [r.layer], r.top_k)[r.layer]
    return _channel_examples(found, r.layer, chosen), stream.kept, stream.skipped


def _channel_examples(found: TopExamples, layer: str, channels: list[int]) -> ChannelExamples:
    """The ``channels`` rows of a layer's streamed statistics: their top examples (at most as
    many as images seen) and their maxima and means over the sampled images."""
    rows, k = torch.tensor(channels, dtype=torch.long), min(found.top_k, found.count)
    order = found.sample_images.argsort()
    return ChannelExamples(
        layer=layer,
        channels=list(channels),
        top_images=found.images[rows, :k],
        top_values=found.values[rows, :k],
        top_positions=found.positions[rows, :k],
        max_per_image=found.sample_maxima[order].T[rows],
        mean_per_image=found.sample_means[order].T[rows],
        sample_images=found.sample_images[order],
    )


def _decoder(model: Model, files: list[Path]) -> Callable[[list[int]], torch.Tensor]:
    """Decodes the images of the given indices of ``files`` for the model (k x C x H x W)."""
    return lambda indices: torch.cat([load_image_tensor(files[i], model.card) for i in indices])


def _write_arrays(out: Path, examples: ChannelExamples, found: list[ChannelProjections]) -> Path:
    """``projections.npz``: per channel its top images, values, unit positions, boxes and
    full projections (channels x k x C x H x W, the model's input space)."""
    return write_npz(
        out / "projections.npz",
        within=out,
        channels=torch.tensor(examples.channels),
        top_images=examples.top_images,
        top_values=examples.top_values,
        top_positions=examples.top_positions,
        boxes=torch.tensor([p.projections.boxes for p in found]),
        projections=torch.stack([p.projections.maps for p in found]),
    )


def _channel_row(item: ChannelProjections, grid: str, names: list[str]) -> dict[str, Any]:
    """The JSON of one channel: its grid and, per example, image, score, unit, box and how
    much of the projection is pixel-scale texture (:func:`high_frequency_share`)."""
    examples = []
    for i, s, u, b, c in zip(
        item.images,
        item.scores,
        item.projections.units.tolist(),
        item.projections.boxes,
        item.projections.crops(),
        strict=True,
    ):
        share, noise = high_frequency_share(c) or (None, None)
        examples.append(
            {
                "image": names[i],
                "score": s,
                "unit": {"y": int(u[1]), "x": int(u[2])},
                "box": list(b),
                "high_frequency_share": share,
                "white_noise_share": noise,
            }
        )
    return {"channel": item.channel, "grid": grid, "examples": examples}


def _texture_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The layer's mean :func:`high_frequency_share` over its projections, beside white noise's;
    ``near_white_noise`` when the mean is at least ``NEAR_NOISE`` of white noise's."""
    measured = [e for row in rows for e in row["examples"] if e["high_frequency_share"] is not None]
    count = len(measured)
    share = sum(e["high_frequency_share"] for e in measured) / count if count else None
    noise = sum(e["white_noise_share"] for e in measured) / count if count else None
    near = share is not None and noise is not None and share >= NEAR_NOISE * noise
    return {
        "cut_cycles_per_pixel": HIGH_FREQUENCY,
        "meaning": "share of each projection's energy (colour mean less its mean, in its box) "
        "above the cut; white noise on the same boxes has white_noise_share, and a projection "
        "near it has no spatial structure left",
        "mean_share": share,
        "white_noise_share": noise,
        "projections_measured": count,
        "near_noise_factor": NEAR_NOISE,
        "near_white_noise": bool(near),
    }
