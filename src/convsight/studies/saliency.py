"""Saliency panels (``saliency``): each image, then each method's map over it.

:func:`write_saliency` takes a built model and a :class:`SaliencyRequest` and returns a
:class:`SaliencyResult`. Every input (images, targets, methods, layer, settings) is checked
before any expensive work; files are written through :mod:`convsight.report` (whole files only).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convsight.attribution import CAM, Method
from convsight.data import exif_orientation, load_image_tensor
from convsight.engines import AUTO
from convsight.errors import ConvsightError
from convsight.models import Model
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
from convsight.studies.results import Result


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


def target_classes(
    model: Model, target: Sequence[str | int] | None, count: int
) -> list[int] | None:
    """One class index per image from one class for all or one each; None when none given."""
    if not target:
        return None
    indices = [model.class_index(t) for t in target]
    if len(indices) == 1:
        return indices * count
    if len(indices) != count:
        raise ConvsightError(f"{len(indices)} targets for {count} images: give one, or one each")
    return indices


@dataclass(frozen=True)
class SaliencyRequest:
    """What :func:`write_saliency` maps: ``images`` (files), each attributed to ``targets``
    (one class, name or index, for all images or one each; None: the predicted class) by
    ``methods`` with the options the command line gives them
    (:func:`~convsight.studies.attribution.method_options`: ``layer`` for the CAMs,
    ``ig_steps``, ``smoothgrad_samples``, ``batch_size``, ``engine``). ``model_name`` (what
    the JSON calls the model; None: the card's name) and ``weights`` are only recorded."""

    images: Sequence[str | os.PathLike]
    targets: Sequence[str | int] | None = None
    methods: Sequence[str] = DEFAULT_METHODS
    layer: str | None = None
    ig_steps: int = 50
    smoothgrad_samples: int = 16
    batch_size: int | None = None
    engine: str = AUTO
    seed: int = 0
    model_name: str | None = None
    weights: str | os.PathLike | None = None


@dataclass(kw_only=True)
class SaliencyResult(Result):
    """Each method's maps of the images (``methods``, in the order asked for), the images'
    pixels and files, the target of each image, the model's probabilities and, per method,
    how it ran (engine, fallback): what ``saliency.json`` / ``.npz`` / the panels hold."""

    model: str
    weights: str | None
    head: str
    paths: list[Path]
    panels: list[str]
    exif_orientation: list[int]
    pixels: torch.Tensor
    probabilities: torch.Tensor
    targets: list[int]
    target_labels: list[str]
    predicted: list[int]
    predicted_labels: list[str]
    methods: list[MethodMaps]
    seed: int

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """Each method's maps (N x H x W), by method name."""
        return {result.method.name: result.maps for result in self.methods}

    @property
    def target_probability(self) -> list[float]:
        """The model's probability of each image's target class."""
        return [float(self.probabilities[i, t]) for i, t in enumerate(self.targets)]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "head": self.head,
            "images": [str(p) for p in self.paths],
            "exif_orientation": self.exif_orientation,  # applied; 1: as stored
            "panels": [
                {"image": str(p), "file": f} for p, f in zip(self.paths, self.panels, strict=True)
            ],
            "targets": [
                {"class": t, "label": label}
                for t, label in zip(self.targets, self.target_labels, strict=True)
            ],
            "target_probability": self.target_probability,
            "predicted": [
                {"class": p, "label": label}
                for p, label in zip(self.predicted, self.predicted_labels, strict=True)
            ],
            "methods": {result.method.name: _method_summary(result) for result in self.methods},
            "seed": self.seed,
        }


def write_saliency(
    model: Model,
    request: SaliencyRequest,
    out: str | os.PathLike = "runs/saliency",
    show_progress: bool = True,
    seeded: bool = False,
) -> SaliencyResult:
    """A panel per image (the image, then each method's map over it), the maps and a summary.

    Writes ``saliency_<image>.png`` per image (distinct names, see :func:`panel_names`; the
    image -> file mapping is ``panels`` in the JSON), ``saliency.png`` (all images),
    ``saliency.npz`` (per method: raw attributions and the N x H x W maps) and
    ``saliency.json`` (``result.to_json()``). The global random number generator is seeded
    with ``request.seed`` first, unless ``seeded``: the caller did, before it loaded the
    model (as the command line does; the noise of SmoothGrad and VarGrad follows from there).
    """
    if not seeded:
        seed_everything(request.seed)
    layer, ig_steps, samples = request.layer, request.ig_steps, request.smoothgrad_samples
    classes = check_methods(model, request.methods, layer)
    check_settings(request.batch_size, ig_steps, samples, request.engine)
    if not request.images:
        raise ConvsightError("no image given: pass --image FILE (one or more)")
    paths = [Path(p) for p in request.images]
    pixels = torch.cat([load_image_tensor(p, model.card) for p in paths]).to(model.device)
    check_batch_memory(model, request.batch_size, len(paths) * max(ig_steps, samples))
    targets = target_classes(model, request.targets, len(paths))
    panels = panel_names(paths)
    out = prepare_out_dir(out)

    with torch.no_grad():
        probs = model.module(model.normalize(pixels)).softmax(1)
    predicted = probs.argmax(1).tolist()
    targets = targets or predicted

    options_for = functools.partial(_options, request)
    maps = attribute_all(model, classes, pixels, targets, options_for, show_progress)
    for entry in maps:  # after the progress bar: one line each
        notice_engine(entry.method.name, entry.run)
    result = SaliencyResult(
        model=request.model_name or model.card.name,
        weights=str(request.weights) if request.weights else None,
        head=model.card.head,
        paths=paths,
        panels=panels,
        exif_orientation=[exif_orientation(p) for p in paths],
        pixels=pixels,
        probabilities=probs,
        targets=targets,
        target_labels=[model.card.label(t) for t in targets],
        predicted=predicted,
        predicted_labels=[model.card.label(p) for p in predicted],
        methods=maps,
        seed=request.seed,
    )
    result.files = _write_panels(out, model.card.name, result)
    result.files.append(_write_arrays(out, pixels, targets, maps))
    result.files.append(write_json(out / "saliency.json", result.to_json()))
    return result


def _options(request: SaliencyRequest, cls: type[Method]) -> dict[str, Any]:
    """The options ``request`` gives method ``cls``."""
    return method_options(
        cls,
        request.layer,
        request.ig_steps,
        request.smoothgrad_samples,
        batch_size=request.batch_size,
        engine=request.engine,
    )


def _write_arrays(
    out: Path, pixels: torch.Tensor, targets: Sequence[int], results: Sequence[MethodMaps]
) -> Path:
    """``saliency.npz``: the pixels, targets, and each method's attributions and maps."""
    arrays: dict[str, Any] = {"pixels": pixels, "targets": torch.tensor(targets)}
    for result in results:
        arrays[f"{result.method.name}_attributions"] = result.attributions
        arrays[f"{result.method.name}_map"] = result.maps
    return write_npz(out / "saliency.npz", **arrays)


def _method_summary(result: MethodMaps) -> dict[str, Any]:
    return {
        "title": result.method.title,
        "reference": result.method.paper,
        "options": result.options,
        "run": result.run,
        "seconds": result.seconds,
    }


def _write_panels(out: Path, model_name: str, result: SaliencyResult) -> list[Path]:
    """A panel per image, then ``saliency.png`` with every image."""
    heatmaps = {entry.method.title: entry.maps for entry in result.methods}
    probs, pixels = result.probabilities, result.pixels
    titles = [
        f"{path.stem[:24]}\n{label[:22]} p={float(probs[i, t]):.2f}"
        for i, (path, t, label) in enumerate(
            zip(result.paths, result.targets, result.target_labels, strict=True)
        )
    ]
    written = []
    for i, panel in enumerate(result.panels):
        one = {title: maps[i : i + 1] for title, maps in heatmaps.items()}
        figure = saliency_panel(pixels[i : i + 1], one, [titles[i]])
        written.append(write_figure(out_file(out, panel), figure, within=out))
    figure = saliency_panel(pixels, heatmaps, titles, title=f"{model_name}")
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
