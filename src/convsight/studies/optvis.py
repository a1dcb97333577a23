"""Jobs behind ``convsight maximize`` and ``convsight classviz``: check, render, write.

Every input (model, layer, channels, classes, dataset, settings, output folder) is checked
before the first optimization step; nothing is written for bad input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from convsight.errors import ConvsightError
from convsight.layers import get_layer, output_shapes
from convsight.models import Model, load_model
from convsight.optvis.budget import check_render, check_steps
from convsight.optvis.channels import parse_channels
from convsight.optvis.forward import probe_shapes
from convsight.optvis.means import class_counts, class_mean_images
from convsight.optvis.model_hooks import check_model_hooks
from convsight.optvis.objectives import channel
from convsight.optvis.recipes import check_size, class_objective
from convsight.optvis.render import RenderResult, render_channels, render_classes
from convsight.optvis.settings import RenderSettings, parse_setting, settings_for
from convsight.report import (
    out_file,
    prepare_out_dir,
    safe_filename,
    write_figure,
    write_json,
    write_npz,
)
from convsight.report.grids import image_grid
from convsight.report.images import write_image
from convsight.runtime import resolve_device, seed_everything


def _check_model_hooks(model: Model, settings: RenderSettings, given: dict[str, Any]) -> None:
    """Hooks the user switched on (``given``) must find their layers. The class preset's skip
    gradient is not checked: on a model without residual blocks it is off (the summary says
    so)."""
    skip = settings.skip_gradient if "skip_gradient" in given else 1.0
    check_model_hooks(model.module, settings.ghost, settings.bn_prior, skip)


def collect_settings(
    preset: str, flags: dict[str, Any], extra: Sequence[str], target: str = "channel"
) -> tuple[RenderSettings, dict[str, Any]]:
    """Preset defaults, then ``--set`` pairs, then the dedicated flags given; and what the
    user gave."""
    overrides = dict(parse_setting(text) for text in extra)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return settings_for(preset, target, **overrides), overrides


def load_on_device(model: str | Model, weights: str | os.PathLike | None, device: str) -> Model:
    """The model (a spec is loaded with ``weights``) on ``device``."""
    dev = resolve_device(device)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    return loaded.to(dev)


def check_channels(model: Model, layer: str, channels: Sequence[int], size: int | None) -> None:
    """Unknown layer, no channel or a channel out of range fails here (one cheap forward at
    ``size`` or the model's input size, no steps)."""
    get_layer(model.module, layer)
    if not channels:
        raise ConvsightError("no channels given")
    h, w = (size, size) if size else model.card.input_size
    x = torch.zeros(1, model.card.channels, h, w, device=model.device)
    objective = channel(layer, list(channels))
    objective.check(probe_shapes(model, objective, x), len(channels))


def _checked_channels(
    loaded: Model,
    layer: str,
    channels: str | Sequence[int],
    settings: RenderSettings,
    given: dict[str, Any],
) -> list[int]:
    """The channels to render (read against the layer's channel count), once the layer has
    them, their render fits in memory and the layer gives a map at the render size."""
    if isinstance(channels, str):
        get_layer(loaded.module, layer)  # the channel count does not depend on the size
        count = output_shapes(loaded.module, [layer], loaded.example_input())[layer][0]
        chans = parse_channels(channels, limit=count)
    else:
        chans = [int(c) for c in channels]
        check_channels(loaded, layer, chans, None)
    rows = (len(chans), layer, given, "number of channels", "channels")
    check_render(loaded, channel(layer, chans), settings, *rows)
    check_size(loaded, channel(layer, 0), settings)  # probes the size: after the memory check
    check_channels(loaded, layer, chans, settings.size)  # the layer's map at this size
    return chans


def _summary_rows(result: RenderResult, names: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"name": name, "objective": float(value), "dead": i in result.dead}
        for i, (name, value) in enumerate(zip(names, result.values.tolist(), strict=True))
    ]


def maximize(
    model: str | Model,
    layer: str,
    channels: str | Sequence[int],
    weights: str | os.PathLike | None = None,
    preset: str = "robust",
    flags: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    out: str | os.PathLike = "runs/maximize",
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = True,
    yes: bool = False,
) -> dict[str, Any]:
    """Render channels of ``layer``: grid PNG, one PNG per channel, images.npz, summary.json.
    Checked against the memory available first (:mod:`convsight.optvis.budget`); more than
    :data:`~convsight.optvis.budget.MAX_STEPS` steps need ``yes``."""
    settings, given = collect_settings(preset, flags or {}, extra)
    check_steps(settings.steps, yes)
    loaded = load_on_device(model, weights, device)
    chans = _checked_channels(loaded, layer, channels, settings, given)
    _check_model_hooks(loaded, settings, given)
    out = prepare_out_dir(out)
    seed_everything(seed)
    start = time.perf_counter()
    result = render_channels(
        loaded, layer, chans, seed=seed, progress=show_progress, settings=settings
    )
    seconds = time.perf_counter() - start
    titles = [
        f"{c}" + (" (dead)" if i in result.dead else f": {v:.3g}")
        for i, (c, v) in enumerate(zip(chans, result.values.tolist(), strict=True))
    ]
    title = f"{loaded.card.name} {layer}, preset {preset}, {settings.steps} steps"
    written = [write_figure(out / "grid.png", image_grid(result.images, titles, 8, title))]
    for c, image in zip(chans, result.images, strict=True):
        written.append(write_image(out / f"channel_{c:04d}.png", image))
    written.append(write_npz(out / "images.npz", images=result.images, channels=chans))
    summary = {
        "model": loaded.card.name,
        "weights": str(weights) if weights else None,
        "layer": layer,
        "objective": result.description,
        "channels": _summary_rows(result, [str(c) for c in chans]),
        "dead_channels": [chans[i] for i in result.dead],
        "settings": {**settings.to_dict(), "seed": seed, "device": str(loaded.device)},
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }
    written.append(write_json(out / "summary.json", summary))
    return {**summary, "written": written}


def _class_indices(loaded: Model, classes: Sequence[str | int]) -> list[int]:
    """Class indices of names or numbers; ``all`` is every class of the model."""
    if [str(c).lower() for c in classes] == ["all"]:
        loaded.class_index(0)  # a model without class scores fails here
        classes = list(range(loaded.card.num_classes or 0))
    return [loaded.class_index(c) for c in classes]


def _check_class_render(
    loaded: Model, indices: list[int], settings: RenderSettings, given: dict[str, Any]
) -> None:
    """The class models' render must fit memory (:func:`check_render`) and the model
    (:func:`check_size`), and its model hooks the model."""
    objective = class_objective(loaded, indices, settings.class_objective, settings.cossim_power)
    rows = (len(indices), "the class scores", given, "number of classes", "classes")
    check_render(loaded, objective, settings, *rows)
    check_size(loaded, objective, settings, len(indices))  # probes the size: after the memory
    _check_model_hooks(loaded, settings, given)


def _mean_start(dataset, loaded: Model, indices: list[int], data_dir):
    """Start images for ``init='mean'``: each class's mean image, and how many were averaged."""
    if dataset is None:
        raise ConvsightError("--init mean needs --dataset DIR (or 'mnist')")
    means = class_mean_images(dataset, loaded.card, indices, data_dir=data_dir)
    return torch.stack([means[i] for i in indices]), class_counts(dataset, loaded.card)


def _write_class_models(out: Path, loaded: Model, result, indices: list[int], title: str):
    """The grid and one PNG per class model, the images as npz; the summary rows (with the
    model's probability for each class) and the files written."""
    with torch.no_grad():
        logits = loaded.module(loaded.normalize(result.images.to(loaded.device))).cpu()
    probs = logits.softmax(1)
    names = [loaded.card.label(i) for i in indices]
    top1 = logits.argmax(1).tolist()
    titles = [
        f"{name}: p={float(probs[r, i]):.2f}"
        for r, (name, i) in enumerate(zip(names, indices, strict=True))
    ]
    written = [write_figure(out / "grid.png", image_grid(result.images, titles, 8, title))]
    files = []
    for i, name, image in zip(indices, names, result.images, strict=True):
        path = out_file(out, f"class_{i:04d}_{safe_filename(name)}.png")
        written.append(write_image(path, image, within=out))
        files.append(path.name)
    written.append(write_npz(out / "images.npz", images=result.images, classes=indices))
    rows = _summary_rows(result, names)
    for r, row in enumerate(rows):
        row.update(
            {
                "class": indices[r],
                "probability": float(probs[r, indices[r]]),
                "logit": float(logits[r, indices[r]]),
                "model_top1": loaded.card.label(top1[r]),
                "file": files[r],
            }
        )
    return rows, written


def _write_start(out: Path, start_pixels: torch.Tensor, counts: dict, rows: list[dict]) -> Path:
    """The start images of ``init='mean'``; each row learns how many images its mean holds."""
    titles = [f"mean of {counts.get(row['class'], '?')} image(s): {row['name']}" for row in rows]
    for row in rows:
        row["mean_of_images"] = counts.get(row["class"])
    return write_figure(out / "start.png", image_grid(start_pixels, titles, 8, "start"))


def classviz(
    model: str | Model,
    classes: Sequence[str | int],
    weights: str | os.PathLike | None = None,
    init: str = "random",
    dataset: str | os.PathLike | None = None,
    preset: str = "robust",
    flags: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    out: str | os.PathLike = "runs/classviz",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    show_progress: bool = True,
    yes: bool = False,
) -> dict[str, Any]:
    """Class models: grid PNG, one PNG per class, start images if ``init='mean'``, summary.
    Checked as :func:`maximize` is (memory; ``yes`` for very many steps)."""
    settings, given = collect_settings(preset, flags or {}, extra, target="class")
    if init not in ("random", "mean"):
        raise ConvsightError(f"--init must be 'random' or 'mean', not '{init}'")
    if not classes:
        raise ConvsightError("no classes given")
    check_steps(settings.steps, yes)
    loaded = load_on_device(model, weights, device)
    indices = _class_indices(loaded, classes)
    _check_class_render(loaded, indices, settings, given)
    start_pixels, counts = None, {}
    if init == "mean":
        start_pixels, counts = _mean_start(dataset, loaded, indices, data_dir)
    out = prepare_out_dir(out)
    seed_everything(seed)
    began = time.perf_counter()
    result = render_classes(
        loaded,
        indices,
        seed=seed,
        init_pixels=start_pixels,
        progress=show_progress,
        settings=settings,
    )
    seconds = time.perf_counter() - began
    title = f"{loaded.card.name}, preset {preset}, init {init}, {settings.steps} steps"
    rows, written = _write_class_models(out, loaded, result, indices, title)
    if start_pixels is not None:
        written.append(_write_start(out, start_pixels, counts, rows))
    summary = {
        "model": loaded.card.name,
        "weights": str(weights) if weights else None,
        "objective": result.description,
        "head": loaded.card.head,
        "init": init,
        "dataset": str(dataset) if dataset else None,
        "classes": rows,
        "settings": {**settings.to_dict(), "seed": seed, "device": str(loaded.device)},
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }
    written.append(write_json(out / "summary.json", summary))
    return {**summary, "written": written}
