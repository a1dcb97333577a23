"""Saliency panels (``saliency``): each image, then each method's map over it.

Every input (model, weights, images, targets, methods, layer, settings) is checked before any
expensive work; files are written through :mod:`convsight.report` (whole files only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convsight.attribution import CAM, Method
from convsight.data import exif_orientation, load_image_tensor
from convsight.errors import ConvsightError
from convsight.models import Model, load_model
from convsight.progress import progress_bar
from convsight.report import (
    out_file,
    prepare_out_dir,
    safe_filename,
    unique_names,
    write_figure,
    write_json,
    write_npz,
)
from convsight.report.overlays import saliency_panel
from convsight.runtime import seed_everything
from convsight.studies.attribution import (
    DEFAULT_METHODS,
    check_batch_memory,
    check_methods,
    check_settings,
    method_options,
    notice_engine,
)


@dataclass
class MethodMaps:
    """What one method gave for the images: its attributions, their maps (N x H x W), the
    options it ran with, how it ran (engine, fallback, memory format) and how long it took."""

    method: type[Method]
    attributions: torch.Tensor
    maps: torch.Tensor
    options: dict[str, Any]
    run: dict[str, Any]
    seconds: float


def attribute_all(
    model: Model,
    classes: Sequence[type[Method]],
    pixels: torch.Tensor,
    targets: Sequence[int],
    options_for: Callable[[type[Method]], dict[str, Any]],
    show_progress: bool = False,
) -> list[MethodMaps]:
    """Each method's maps for ``pixels``, with the options ``options_for`` gives it (a CAM's
    layer is recorded as the one it used)."""
    results = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task("saliency", total=len(classes), status="")
        for cls in classes:
            bar.update(task, status=cls.name)
            method = cls(model)
            options = options_for(cls)
            start = time.perf_counter()
            raw = method.attribute(pixels, targets, **options)
            seconds = time.perf_counter() - start
            if isinstance(method, CAM):  # the layer it used (the default, when none was given)
                options["layer"] = method.last_run["layer"]
            maps = method.to_heatmap(raw)
            results.append(MethodMaps(cls, raw, maps, options, dict(method.last_run), seconds))
            bar.advance(task)
    return results


def target_classes(model: Model, target: Sequence[str] | None, count: int) -> list[int] | None:
    """One class index per image from one class for all or one each; None when none given."""
    if not target:
        return None
    indices = [model.class_index(t) for t in target]
    if len(indices) == 1:
        return indices * count
    if len(indices) != count:
        raise ConvsightError(f"{len(indices)} targets for {count} images: give one, or one each")
    return indices


def write_saliency(
    model: str | Model,
    images: Sequence[str | os.PathLike],
    weights: str | os.PathLike | None = None,
    target: Sequence[str] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    layer: str | None = None,
    out: Path = Path("runs/saliency"),
    seed: int = 0,
    ig_steps: int = 50,
    smoothgrad_samples: int = 16,
    batch_size: int | None = None,
    engine: str = "auto",
    show_progress: bool = True,
) -> list[Path]:
    """A panel per image (the image, then each method's map over it), the maps and a summary.

    Writes ``saliency_<image>.png`` per image (distinct names, see :func:`panel_names`; the
    image -> file mapping is ``panels`` in the JSON), ``saliency.png`` (all images),
    ``saliency.npz`` (per method: raw attributions and the N x H x W maps) and ``saliency.json``.
    ``target``: one class for all images, or one per image; default: the predicted class.
    """
    seed_everything(seed)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    classes = check_methods(loaded, methods, layer)
    check_settings(batch_size, ig_steps, smoothgrad_samples, engine)
    if not images:
        raise ConvsightError("no image given: pass --image FILE (one or more)")
    paths = [Path(p) for p in images]
    pixels = torch.cat([load_image_tensor(p, loaded.card) for p in paths]).to(loaded.device)
    check_batch_memory(loaded, batch_size, len(paths) * max(ig_steps, smoothgrad_samples))
    targets = target_classes(loaded, target, len(paths))
    panels = panel_names(paths)
    out = prepare_out_dir(out)

    with torch.no_grad():
        probs = loaded.module(loaded.normalize(pixels)).softmax(1)
    targets = targets or probs.argmax(1).tolist()

    def options_for(cls: type[Method]) -> dict[str, Any]:
        return method_options(
            cls, layer, ig_steps, smoothgrad_samples, batch_size=batch_size, engine=engine
        )

    results = attribute_all(loaded, classes, pixels, targets, options_for, show_progress)
    for result in results:  # after the progress bar: one line each
        notice_engine(result.method.name, result.run)
    written = _write_panels(out, loaded, paths, panels, pixels, probs, targets, results)
    written.append(_write_arrays(out, pixels, targets, results))
    summary = {
        "model": model if isinstance(model, str) else loaded.card.name,
        "weights": str(weights) if weights else None,
        "head": loaded.card.head,
        **_images_summary(loaded, paths, panels, probs, targets),
        "methods": {result.method.name: _method_summary(result) for result in results},
        "seed": seed,
    }
    written.append(write_json(out / "saliency.json", summary))
    return written


def _write_arrays(
    out: Path, pixels: torch.Tensor, targets: Sequence[int], results: Sequence[MethodMaps]
) -> Path:
    """``saliency.npz``: the pixels, targets, and each method's attributions and maps."""
    arrays: dict[str, Any] = {"pixels": pixels, "targets": torch.tensor(targets)}
    for result in results:
        arrays[f"{result.method.name}_attributions"] = result.attributions
        arrays[f"{result.method.name}_map"] = result.maps
    return write_npz(out / "saliency.npz", **arrays)


def _images_summary(
    model: Model,
    paths: Sequence[Path],
    panels: Sequence[str],
    probs: torch.Tensor,
    targets: Sequence[int],
) -> dict[str, Any]:
    """The images, their panels, targets and predictions, for ``saliency.json``."""
    label = model.card.label
    predicted = probs.argmax(1).tolist()
    return {
        "images": [str(p) for p in paths],
        "exif_orientation": [exif_orientation(p) for p in paths],  # applied; 1: as stored
        "panels": [{"image": str(p), "file": f} for p, f in zip(paths, panels, strict=True)],
        "targets": [{"class": t, "label": label(t)} for t in targets],
        "target_probability": [float(probs[i, t]) for i, t in enumerate(targets)],
        "predicted": [{"class": p, "label": label(p)} for p in predicted],
    }


def _method_summary(result: MethodMaps) -> dict[str, Any]:
    return {
        "title": result.method.title,
        "reference": result.method.paper,
        "options": result.options,
        "run": result.run,
        "seconds": result.seconds,
    }


def _write_panels(
    out: Path,
    model: Model,
    paths: Sequence[Path],
    panels: Sequence[str],
    pixels: torch.Tensor,
    probs: torch.Tensor,
    targets: Sequence[int],
    results: Sequence[MethodMaps],
) -> list[Path]:
    """A panel per image, then ``saliency.png`` with every image."""
    heatmaps = {result.method.title: result.maps for result in results}
    titles = [
        f"{path.stem[:24]}\n{model.card.label(t)[:22]} p={float(probs[i, t]):.2f}"
        for i, (path, t) in enumerate(zip(paths, targets, strict=True))
    ]
    written = []
    for i, panel in enumerate(panels):
        one = {title: maps[i : i + 1] for title, maps in heatmaps.items()}
        figure = saliency_panel(pixels[i : i + 1], one, [titles[i]])
        written.append(write_figure(out_file(out, panel), figure, within=out))
    figure = saliency_panel(pixels, heatmaps, titles, title=f"{model.card.name}")
    written.append(write_figure(out / "saliency.png", figure))
    return written


def panel_names(paths: Sequence[Path]) -> list[str]:
    """``saliency_<image>.png`` for each image, distinct and the same for the same list.

    Images sharing a name (``a/x.jpg``, ``b/x.jpg``) are told apart by their folder's name,
    then by ``-2``, ``-3``, ...; every name goes through the one file-name sanitizer.
    """
    stems = [safe_filename(p.stem).casefold() for p in paths]
    names = [
        f"{p.parent.name}_{p.stem}" if stems.count(stem) > 1 and p.parent.name else p.stem
        for p, stem in zip(paths, stems, strict=True)
    ]
    return [f"saliency_{name}.png" for name in unique_names(names)]
