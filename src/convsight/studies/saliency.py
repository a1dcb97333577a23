"""Saliency panels (``saliency``): each image, then each method's map over it.

:func:`saliency` takes a built model and a :class:`SaliencyRequest` and returns a
:class:`SaliencyResult` (nothing written; in a notebook it shows itself); ``result.save(folder)``
writes its files, and :func:`write_saliency` (the command line's) does both. Every input
(images, targets, methods, layer, settings) is checked before any expensive work; files are
written through :mod:`convsight.report` (whole files only).
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

from convsight.attribution import CAM, Method, check_inputs
from convsight.attribution.lrp import composite_name
from convsight.data import exif_orientation, load_image_tensor
from convsight.engines import AUTO, select
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
from convsight.report.notebook import Tile
from convsight.report.overlays import overlay, saliency_panel
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
from convsight.targets import (
    ClassTarget,
    OneTarget,
    Target,
    TargetLike,
    parse_target,
    resolve_targets,
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
    targets: TargetLike,
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


Images = Sequence[str | os.PathLike] | torch.Tensor


@dataclass(frozen=True)
class SaliencyRequest:
    """What :func:`saliency` maps: ``images`` (files, or pixels N x C x H x W in [0, 1]), each
    attributed to ``targets`` (one target for all images or one each: a class name or index,
    ``class:NAME``, ``margin:NAME``, ``segment:CLASS[:MASK.png]``, ``output:INDEX`` or a
    :class:`~convsight.targets.Target`; None: the predicted class) by ``methods`` with the
    options the command line gives them (:func:`~convsight.studies.attribution.method_options`:
    ``layer`` for the CAMs, ``ig_steps``, ``smoothgrad_samples``, ``batch_size``,
    ``engine``; ``composite``: LRP's rules, None its default). ``model_name`` (what the JSON
    calls the model; None: the card's name) and ``weights`` are only recorded."""

    images: Images
    targets: Sequence[OneTarget] | None = None
    methods: Sequence[str] = DEFAULT_METHODS
    layer: str | None = None
    ig_steps: int = 50
    smoothgrad_samples: int = 16
    batch_size: int | None = None
    engine: str = AUTO
    seed: int = 0
    model_name: str | None = None
    weights: str | os.PathLike | None = None
    composite: str | None = None

    def __post_init__(self) -> None:
        for target in self.targets or ():  # command-line text: its form, before any work
            if isinstance(target, str):
                parse_target(target)
        if self.composite is not None:
            composite_name(self.composite)


@dataclass(kw_only=True)
class SaliencyResult(Result):
    """Each method's maps of the images (``methods``, in the order asked for), the images'
    pixels and files, the target of each image and its score, the model's probabilities
    (class outputs) and, per method, how it ran (engine, fallback): what ``saliency.json`` /
    ``.npz`` / the panels hold. ``targets``/``target_labels`` are the classes of a class
    target (else None); ``target``/``target_scores`` say what was explained, whatever it is."""

    model: str
    weights: str | None
    head: str
    paths: list[Path]
    panels: list[str]
    exif_orientation: list[int]
    pixels: torch.Tensor
    probabilities: torch.Tensor | None
    target: Target
    target_scores: list[float]
    targets: list[int] | None
    target_labels: list[str] | None
    predicted: list[int] | None
    predicted_labels: list[str] | None
    methods: list[MethodMaps]
    seed: int

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """Each method's maps (N x H x W), by method name."""
        return {result.method.name: result.maps for result in self.methods}

    @property
    def target_probability(self) -> list[float] | None:
        """The model's probability of each image's target class (class targets only)."""
        if self.targets is None or self.probabilities is None:
            return None
        return [float(self.probabilities[i, t]) for i, t in enumerate(self.targets)]

    def captions(self) -> list[str]:
        """Each image's caption: its name, then its class and probability, or its target."""
        shown = self.target_probability
        if shown is not None and self.target_labels is not None:
            what = [
                f"{label[:22]} p={p:.2f}"
                for label, p in zip(self.target_labels, shown, strict=True)
            ]
        else:
            what = [f"{_clip(self.target.describe(), 30)} s={s:.3g}" for s in self.target_scores]
        return [f"{path.stem[:24]}\n{line}" for path, line in zip(self.paths, what, strict=True)]

    def tiles(self) -> list[Tile]:
        """Each image, then each method's map over it (captions: image, target, method)."""
        captions = [c.replace("\n", ": ") for c in self.captions()]
        tiles = []
        for i, caption in enumerate(captions):
            tiles.append(Tile(self.pixels[i], caption))
            for entry in self.methods:
                tiles.append(Tile(overlay(self.pixels[i], entry.maps[i]), entry.method.title))
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        return [
            ("model", self.model),
            ("target", self.target.describe()),
            ("images", len(self.paths)),
            *((e.method.title, f"{e.seconds:.2f} s, {e.run.get('engine')}") for e in self.methods),
        ]

    def to_json(self) -> dict[str, Any]:
        return saliency_json(self)

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write the panels, ``saliency.npz`` and ``saliency.json`` into ``out``."""
        self.files = write_saliency_files(prepare_out_dir(out), self)
        return self.files


def _clip(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` characters at a word's end (an ellipsis when cut)."""
    return text if len(text) <= size else text[:size].rsplit(" ", 1)[0] + "…"


def saliency(
    model: Model, request: SaliencyRequest, show_progress: bool = False, seeded: bool = False
) -> SaliencyResult:
    """Each method's maps of the request's images, nothing written (``result.save(folder)``
    writes the files; in a notebook the result shows itself). The global random number
    generator is seeded with ``request.seed`` first, unless ``seeded``."""
    if not seeded:
        seed_everything(request.seed)
    return _compute(model, request, _checked(model, request), show_progress)


def write_saliency(
    model: Model,
    request: SaliencyRequest,
    out: str | os.PathLike = "runs/saliency",
    show_progress: bool = True,
    seeded: bool = False,
) -> SaliencyResult:
    """:func:`saliency`, then ``result.save(out)``: a panel per image, the maps and a summary.

    Writes ``saliency_<image>.png`` per image (distinct names, see :func:`panel_names`; the
    image -> file mapping is ``panels`` in the JSON), ``saliency.png`` (all images),
    ``saliency.npz`` (per method: raw attributions and the N x H x W maps) and
    ``saliency.json`` (``result.to_json()``). Every input is checked before the folder is
    made, and the folder before any expensive work. The global random number generator is
    seeded with ``request.seed`` first, unless ``seeded``: the caller did, before it loaded
    the model (as the command line does; the noise of SmoothGrad and VarGrad follows).
    """
    if not seeded:
        seed_everything(request.seed)
    checked = _checked(model, request)
    prepare_out_dir(out)
    result = _compute(model, request, checked, show_progress)
    result.save(out)
    return result


@dataclass(frozen=True)
class _Checked:
    """A request's inputs, checked: the methods, the images and the bound target."""

    classes: list[type[Method]]
    pixels: torch.Tensor
    paths: list[Path]
    target: Target | None


def _checked(model: Model, request: SaliencyRequest) -> _Checked:
    layer, ig_steps, samples = request.layer, request.ig_steps, request.smoothgrad_samples
    classes = check_methods(model, request.methods, layer)
    check_settings(request.batch_size, ig_steps, samples, request.engine)
    pixels, paths = request_images(model, request.images)
    check_batch_memory(model, request.batch_size, len(paths) * max(ig_steps, samples))
    target = request_target(model, request.targets, len(paths))
    return _Checked(classes, pixels, paths, target)


def request_images(model: Model, images: Images) -> tuple[torch.Tensor, list[Path]]:
    """The pixels of the images (files, or a pixel tensor checked against the card) and their
    names (a tensor's rows are ``image_0``, ``image_1``, ...)."""
    if isinstance(images, torch.Tensor):
        pixels = check_inputs(model, images).detach()
        return pixels, [Path(f"image_{i}") for i in range(pixels.shape[0])]
    if not images:
        raise ConvsightError("no image given: pass --image FILE (one or more)")
    paths = [Path(p) for p in images]
    pixels = torch.cat([load_image_tensor(p, model.card) for p in paths]).to(model.device)
    return pixels, paths


def request_target(model: Model, targets: Sequence[OneTarget] | None, count: int) -> Target | None:
    """One bound target for ``count`` images from the request's (command-line text parsed
    by :func:`~convsight.targets.parse_target`); None when none was given."""
    if not targets:
        return None
    items = [parse_target(t) if isinstance(t, str) else t for t in targets]
    return resolve_targets(model, items, count)


def _compute(
    model: Model, request: SaliencyRequest, checked: _Checked, show_progress: bool
) -> SaliencyResult:
    pixels, paths = checked.pixels, checked.paths
    with torch.no_grad():
        output = model.module(model.normalize(pixels))
    classwise = output.dim() == 2
    probs = output.softmax(1) if classwise else None
    predicted = probs.argmax(1).tolist() if probs is not None else None
    target = checked.target or ClassTarget(torch.tensor(predict_or_refuse(model, predicted)))
    scores = [float(v) for v in select(output, target)]
    options_for = functools.partial(_options, request)
    maps = attribute_all(model, checked.classes, pixels, target, options_for, show_progress)
    for entry in maps:  # after the progress bar: one line each
        notice_engine(entry.method.name, entry.run)
    classes = target.classes() if classwise else None
    label = model.card.label
    return SaliencyResult(
        model=request.model_name or model.card.name,
        weights=str(request.weights) if request.weights else None,
        head=model.card.head,
        paths=paths,
        panels=panel_names(paths),
        exif_orientation=[exif_orientation(p) if p.is_file() else 1 for p in paths],
        pixels=pixels,
        probabilities=probs,
        target=target,
        target_scores=scores,
        targets=classes,
        target_labels=[label(t) for t in classes] if classes is not None else None,
        predicted=predicted,
        predicted_labels=[label(p) for p in predicted] if predicted is not None else None,
        methods=maps,
        seed=request.seed,
    )


def predict_or_refuse(model: Model, predicted: list[int] | None) -> list[int]:
    """The predicted classes, the default target; a model without class rows needs one."""
    if predicted is None:
        raise ConvsightError(
            f"model '{model.card.name}' gives no row of class scores per image, so there is "
            "no predicted class to explain: give --target (segment:CLASS[:MASK.png], "
            "output:INDEX)"
        )
    return predicted


def _options(request: SaliencyRequest, cls: type[Method]) -> dict[str, Any]:
    """The options ``request`` gives method ``cls``."""
    return method_options(
        cls,
        request.layer,
        request.ig_steps,
        request.smoothgrad_samples,
        batch_size=request.batch_size,
        engine=request.engine,
        composite=request.composite,
    )


def saliency_json(result: SaliencyResult) -> dict[str, Any]:
    """What ``saliency.json`` holds: the images, the target (a class target: each image's
    class and probability; another: what it is and each image's score), the predicted
    classes (class outputs) and each method's options and run."""
    data: dict[str, Any] = {
        "model": result.model,
        "weights": result.weights,
        "head": result.head,
        "images": [str(p) for p in result.paths],
        "exif_orientation": result.exif_orientation,  # applied; 1: as stored
        "panels": [
            {"image": str(p), "file": f} for p, f in zip(result.paths, result.panels, strict=True)
        ],
    }
    if result.targets is not None and result.target_labels is not None:
        data["targets"] = [
            {"class": t, "label": label}
            for t, label in zip(result.targets, result.target_labels, strict=True)
        ]
        data["target_probability"] = result.target_probability
    else:
        data["target"] = result.target.describe()
        data["target_score"] = result.target_scores
    if result.predicted is not None and result.predicted_labels is not None:
        data["predicted"] = [
            {"class": p, "label": label}
            for p, label in zip(result.predicted, result.predicted_labels, strict=True)
        ]
    data["methods"] = {entry.method.name: _method_summary(entry) for entry in result.methods}
    data["seed"] = result.seed
    return data


def write_saliency_files(out: Path, result: SaliencyResult) -> list[Path]:
    """The panels, ``saliency.npz`` (pixels, targets, each method's attributions and maps)
    and ``saliency.json`` in ``out``."""
    written = _write_panels(out, result.model, result)
    arrays: dict[str, Any] = {"pixels": result.pixels}
    if result.targets is not None:
        arrays["targets"] = torch.tensor(result.targets)
    else:
        arrays["target_scores"] = torch.tensor(result.target_scores)
    for entry in result.methods:
        arrays[f"{entry.method.name}_attributions"] = entry.attributions
        arrays[f"{entry.method.name}_map"] = entry.maps
    written.append(write_npz(out / "saliency.npz", **arrays))
    written.append(write_json(out / "saliency.json", result.to_json()))
    return written


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
    pixels, titles = result.pixels, result.captions()
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
