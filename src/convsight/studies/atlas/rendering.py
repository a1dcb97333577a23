"""The atlas's work per layer: render the channels not done yet (each preset) and find their
top dataset examples; one record per channel marks it done."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID

from convsight.analysis.dataset_examples import ReceptiveField, receptive_field, top_examples
from convsight.analysis.invariances import HessianScale, channel_response, invariances
from convsight.analysis.projections import display, project_units, tiles
from convsight.analysis.surrogate import softplus_surrogate
from convsight.models import Model
from convsight.optvis.render import RenderResult, render_channels
from convsight.optvis.settings import RenderSettings
from convsight.report import safe_filename, write_json, write_npz
from convsight.report.images import examples_strip, write_gif, write_image, write_pil
from convsight.studies.atlas.inputs import AtlasDataset, AtlasJob
from convsight.studies.invariances import GIF_SIDE, sphere_path


def render_layer(
    job: AtlasJob, name: str, folder: Path, out: Path, bar: Progress, task: TaskID
) -> int:
    """Render the channels of layer ``name`` that have no record yet, ``job.batch`` at a time;
    write their images and records into ``folder``. Returns how many were rendered."""
    records = folder / "records"
    data = job.dataset
    examples = (
        _examples(job.model, name, data.pixels, job.top_k, folder, out)
        if data is not None
        else None
    )
    field = receptive_field(job.model, name) if data is not None else None
    surrogate = softplus_surrogate(job.model, job.invariances)[0] if job.invariances else None
    invariance_from = "robust" if "robust" in job.settings else job.presets[0]
    todo = [c for c in job.chosen[name] if not (records / f"c{c}.json").exists()]
    bar.update(task, advance=len(job.chosen[name]) - len(todo), status=f"{name}")
    for i in range(0, len(todo), job.batch):
        chunk = todo[i : i + job.batch]
        results = {
            p: render_channels(job.model, name, chunk, preset=p, seed=job.seed, **_overrides(s))
            for p, s in job.settings.items()
        }
        for row, channel in enumerate(chunk):
            record = _channel_record(job, results, row, channel, folder, out)
            if examples is not None:
                record["examples"] = _write_examples(
                    job.model, name, folder, channel, examples, field, data, out
                )
                record["projections"] = True
            if surrogate is not None:
                optimum = results[invariance_from].images[row]
                gif = folder / "img" / f"c{channel}_invariance.gif"
                found = _write_invariance(job, surrogate, name, channel, optimum, gif, out)
                record["invariance"] = {"from": invariance_from, **found}
            write_json(records / f"c{channel}.json", record, within=out)
            bar.update(task, advance=1)
    return len(todo)


def _channel_record(
    job: AtlasJob,
    results: dict[str, RenderResult],
    row: int,
    channel: int,
    folder: Path,
    out: Path,
) -> dict[str, Any]:
    """Write the images of one channel (a batch ``row``); its record: objective values per
    preset and whether it is dead (by the paper preset when rendered, else the first)."""
    values = {}
    for p, result in results.items():
        image = folder / "img" / f"c{channel}_{safe_filename(p)}.png"
        write_image(image, result.images[row], 112, within=out)
        values[p] = float(result.values[row])
    dead_from = results["paper"] if "paper" in results else results[job.presets[0]]
    return {
        "channel": channel,
        "values": values,
        "dead": row in dead_from.dead,
        "rendered_at": time.time(),
    }


def _write_invariance(
    job: AtlasJob,
    surrogate: Model,
    layer: str,
    channel: int,
    optimum: torch.Tensor,
    gif: Path,
    out: Path,
) -> dict[str, Any]:
    """The channel's first invariance at its rendered ``optimum`` (on the response's level set
    within its sphere), from the exact Hessian of the softplus surrogate: a GIF of the
    network's images along it; its eigenvalue and check for the record."""
    x = optimum.to(job.model.device)
    f = channel_response(surrogate, layer, channel, x.shape[-1])
    scale = HessianScale(softplus=job.invariances)
    found = invariances(f, x, k=1, scale=scale, seed=job.seed, level_set=True)
    angles = torch.linspace(0.0, math.radians(45.0), 9)
    frames = sphere_path(found.point, found.invariant[0], angles).clamp(0, 1)
    write_gif(gif, frames, GIF_SIDE, within=out)
    return {
        "eigenvalue": float(found.invariant_values[0]),
        "reliable": found.reliable,
        "products": found.products,
        "tangent_gradient_norm": found.tangent_gradient_norm,
        "seconds": found.seconds,
    }


def _overrides(settings: RenderSettings) -> dict[str, Any]:
    return {"steps": settings.steps, "size": settings.size}


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` file as tensors."""
    import numpy as np

    with np.load(path) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def _examples(
    model: Model, layer: str, pixels: torch.Tensor, top_k: int, folder: Path, out: Path
) -> dict[str, torch.Tensor]:
    """Top dataset examples of every channel of ``layer``; computed once, then read back."""
    cache = folder / "examples.npz"
    if cache.exists():
        return load_npz(cache)
    found = top_examples(model, pixels, layer, top_k=top_k)
    data = {
        "top_images": found.top_images,
        "top_values": found.top_values,
        "top_positions": found.top_positions,
        "max_per_image": found.max_per_image,
    }
    write_npz(cache, within=out, **data)
    return data


def _write_examples(
    model: Model,
    layer: str,
    folder: Path,
    channel: int,
    examples: dict[str, torch.Tensor],
    field: ReceptiveField,
    data: AtlasDataset,
    out: Path,
) -> list[dict[str, Any]]:
    """The strip of a channel's top examples (receptive fields boxed) and, tile under tile,
    the DeconvNet projection of each one's strongest unit; their names, values and boxes
    for its record."""
    chosen = examples["top_images"][channel].tolist()
    positions = examples["top_positions"][channel].tolist()
    boxes = [field.box(y, x) for y, x in positions]
    strip = examples_strip([data.pixels[i] for i in chosen], boxes)
    write_pil(folder / "img" / f"c{channel}_examples.png", strip, within=out)
    units = torch.tensor([[channel, y, x] for y, x in positions])
    projected = project_units(model, data.pixels[chosen], layer, units, field)
    shown = tiles([[display(m) for m in projected.crops()]])
    write_pil(folder / "img" / f"c{channel}_projections.png", shown, within=out)
    values = examples["top_values"][channel].tolist()
    return [
        {"name": data.names[i], "value": v, "box": b}
        for i, v, b in zip(chosen, values, boxes, strict=True)
    ]
