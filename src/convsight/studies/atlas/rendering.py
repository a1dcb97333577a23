"""The atlas's work per layer: render the channels not done yet (each preset) and find their
top dataset examples; one record per channel marks it done."""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID

from convsight.analysis.channel_statistics import ChannelStatistics
from convsight.analysis.dataset_examples import (
    ReceptiveField,
    receptive_field,
)
from convsight.analysis.projections import high_frequency_share, tiles
from convsight.analysis.streamed_examples import TopExamples
from convsight.distributed import Work, shards
from convsight.optvis.render import RenderResult
from convsight.report import safe_filename, write_json, write_npz
from convsight.report.images import examples_strip, write_gif, write_image, write_pil
from convsight.studies.atlas.inputs import AtlasDataset, AtlasJob
from convsight.studies.atlas.picture_paths import FROM_RENDER, LayerPaths, fill_paths, main_preset
from convsight.studies.atlas.tasks import RenderedChunk, render_chunk, slice_examples
from convsight.studies.atlas.trust import (
    TRUST_FILE,
    channel_trust,
    relevant_classes,
    trust_arrays,
)
from convsight.studies.invariances import GIF_SIDE

EXAMPLE_BATCH = 16  # images a batch of the dataset pass
EXAMPLES_FILE = "examples.npz"  # a layer's top dataset examples, found once


def render_layer(
    job: AtlasJob,
    name: str,
    folder: Path,
    out: Path,
    work: Work,
    bar: Progress,
    task: TaskID,
) -> tuple[int, float]:
    """Render the channels of layer ``name`` that have no record yet, ``job.batch`` at a time
    (each chunk a unit of ``work``); write their images and records into ``folder`` as the
    chunks come back (with a dataset, each picture's path similarity measured as it comes
    back, and that of channels an earlier run rendered without one). Returns how many were
    rendered and the seconds their renders took (each preset's, as the workers measured
    them)."""
    found = _LayerData.read(job, name, folder)
    todo = todo_channels(job, name, folder)
    bar.update(task, advance=len(job.chosen[name]) - len(todo), status=f"{name}")
    shared = {
        "model": job.model,
        "layer": name,
        "settings": job.settings,
        "seed": job.seed,
        "invariance_beta": job.invariances,
    }
    if found.examples is not None:  # the dataset (its file list) and the examples once per layer
        shared.update(dataset=found.data, examples=found.examples, receptive=found.field)
    chunks = [{"channels": todo[i : i + job.batch]} for i in range(0, len(todo), job.batch)]
    seconds = 0.0
    for _, chunk in work.map(render_chunk, shared, chunks):
        seconds += sum(result.seconds for result in chunk.renders.values())
        paths = None
        if found.paths is not None:
            paths = found.paths.of(chunk.channels, chunk.renders[main_preset(job)].images)
        for row, channel in enumerate(chunk.channels):
            record = _channel_record(job, chunk.renders, row, channel, folder, out)
            _add_findings(record, job, chunk, row, found, folder, out)
            record["trust"]["path"] = paths[row] if paths is not None else None
            if paths is not None:
                record["trust"]["path_source"] = FROM_RENDER
            write_json(folder / "records" / f"c{channel}.json", record, within=out)
            bar.update(task, advance=1)
    if found.paths is not None:
        fill_paths(job, name, folder, out, found.paths)
    return len(todo), seconds


@dataclass
class _LayerData:
    """What the dataset pass left for a layer (each None without a dataset): the dataset, its
    top examples, the layer's receptive field, its trust statistics and path measure."""

    data: AtlasDataset | None
    examples: dict[str, torch.Tensor] | None
    field: ReceptiveField | None
    trust: dict[str, torch.Tensor] | None
    paths: LayerPaths | None

    @staticmethod
    def read(job: AtlasJob, name: str, folder: Path) -> _LayerData:
        data = job.dataset
        if data is None:
            return _LayerData(None, None, None, None, None)
        trust = load_npz(folder / TRUST_FILE)
        examples, field = load_npz(folder / EXAMPLES_FILE), receptive_field(job.model, name)
        return _LayerData(data, examples, field, trust, LayerPaths(job, name, trust))


def _add_findings(
    record: dict[str, Any],
    job: AtlasJob,
    chunk: RenderedChunk,
    row: int,
    found: _LayerData,
    folder: Path,
    out: Path,
) -> None:
    """A channel's final objectives, trust, classes, examples and invariance (a chunk's
    ``row``) into its ``record``; its strips and GIF written."""
    channel = chunk.channels[row]
    record["final_objectives"] = {p: v[row] for p, v in chunk.objectives.items()}
    record["trust"] = channel_trust(found.trust, channel, record["final_objectives"])
    record["relevant_classes"] = relevant_classes(found.trust, channel, job.model.card)
    if found.examples is not None:
        assert found.data is not None and found.field is not None  # they come together
        record["examples"] = _write_examples(
            folder, channel, found.examples, chunk.projections[row], found.field, found.data, out
        )
        record["projections"] = True
    if chunk.invariances:
        invariance = dict(chunk.invariances[row])
        gif = folder / "img" / f"c{channel}_invariance.gif"
        write_gif(gif, invariance.pop("frames"), GIF_SIDE, within=out)
        record["invariance"] = invariance


def todo_channels(job: AtlasJob, name: str, folder: Path) -> list[int]:
    """The chosen channels of layer ``name`` not done in ``folder``: no record yet, or one
    that cannot be read or names an image that is gone (a damaged channel is redone)."""
    return [c for c in job.chosen[name] if not _channel_done(job, folder, c)]


def _channel_done(job: AtlasJob, folder: Path, channel: int) -> bool:
    """Whether ``channel`` has a readable record of every preset and all its images."""
    try:
        record = json.loads((folder / "records" / f"c{channel}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("values"), dict):
        return False
    if not isinstance(record.get("dead"), bool):
        return False
    images = [f"c{channel}_{safe_filename(p)}.png" for p in job.presets]
    if job.dataset is not None:
        images += [f"c{channel}_examples.png", f"c{channel}_projections.png"]
        if not isinstance(record.get("examples"), list):
            return False
    if job.invariances:
        images.append(f"c{channel}_invariance.gif")
    return set(job.presets) <= set(record["values"]) and all(
        (folder / "img" / image).is_file() for image in images
    )


def _channel_record(
    job: AtlasJob,
    results: dict[str, RenderResult],
    row: int,
    channel: int,
    folder: Path,
    out: Path,
) -> dict[str, Any]:
    """Write the images of one channel (a batch ``row``); its record: objective values and
    steps taken per preset (fewer than asked where its batch stopped once flat) and whether it
    is dead (by the paper preset when rendered, else the first)."""
    values, steps = {}, {}
    for p, result in results.items():
        image = folder / "img" / f"c{channel}_{safe_filename(p)}.png"
        write_image(image, result.images[row], 112, within=out)
        values[p] = float(result.values[row])
        steps[p] = result.steps_run
    dead_from = results["paper"] if "paper" in results else results[job.presets[0]]
    return {
        "channel": channel,
        "values": values,
        "steps": steps,
        "dead": row in dead_from.dead,
        "rendered_at": time.time(),
    }


def _readable(path: Path) -> bool:
    """Whether the ``.npz`` file at ``path`` exists and reads whole (else it is made again)."""
    try:
        load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return True


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` file as tensors."""
    import numpy as np

    with np.load(path) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def find_examples(job: AtlasJob, folders: dict[str, Path], out: Path, work: Work) -> None:
    """Top dataset examples of every channel of each layer in ``folders`` that has none
    recorded yet: one streamed pass over the dataset for them all (a batch of images in
    memory at a time), cut into slices over the workers, each returning fixed-size
    statistics (:class:`TopExamples`); each layer's ``examples.npz`` written: the top images,
    values and positions, and each channel's maxima over the sampled images (every image up
    to :data:`SAMPLE`: ``sample_images``) with its mean over all of them."""
    missing = [
        name
        for name, folder in folders.items()
        if not (_readable(folder / EXAMPLES_FILE) and _readable(folder / TRUST_FILE))
    ]
    data = job.dataset
    if not missing or data is None:
        return
    parts = shards(len(data), EXAMPLE_BATCH, 2 * work.workers)
    shared = {"model": job.model, "dataset": data, "layers": missing, "top_k": job.top_k}
    shared.update(batch_size=EXAMPLE_BATCH, relevance=job.class_relevance)
    found = dict(work.map(slice_examples, shared, parts))
    for name in missing:
        merged = TopExamples.merge([found[i][0][name] for i in range(len(parts))])
        stats = ChannelStatistics.merge([found[i][1][name] for i in range(len(parts))])
        write_npz(folders[name] / TRUST_FILE, within=out, **trust_arrays(stats, merged))
        k = min(job.top_k, merged.count)
        sampled, maxima = merged.histogram_values()
        write_npz(
            folders[name] / EXAMPLES_FILE,
            within=out,
            top_images=merged.images[:, :k],
            top_values=merged.values[:, :k],
            top_positions=merged.positions[:, :k],
            max_per_image=maxima,
            sample_images=sampled,
            mean_per_channel=merged.means(),
            images=torch.tensor(merged.count),
        )


def _write_examples(
    folder: Path,
    channel: int,
    examples: dict[str, torch.Tensor],
    projections: list[torch.Tensor],
    field: ReceptiveField,
    data: AtlasDataset,
    out: Path,
) -> list[dict[str, Any]]:
    """The strip of a channel's top examples (receptive fields boxed) and, tile under tile,
    the DeconvNet ``projections`` of each one's strongest unit; their names, values and
    boxes for its record."""
    chosen = examples["top_images"][channel].tolist()
    positions = examples["top_positions"][channel].tolist()
    boxes = [field.box(y, x) for y, x in positions]
    strip = examples_strip(list(data.load(chosen)), boxes)
    write_pil(folder / "img" / f"c{channel}_examples.png", strip, within=out)
    write_pil(folder / "img" / f"c{channel}_projections.png", tiles([projections]), within=out)
    values = examples["top_values"][channel].tolist()
    rows = []
    for i, v, b, shown in zip(chosen, values, boxes, projections, strict=True):
        share, noise = high_frequency_share(shown) or (None, None)  # display is affine
        rows.append(
            {"name": data.names[i], "value": v, "box": b}
            | {"high_frequency_share": share, "white_noise_share": noise}
        )
    return rows
