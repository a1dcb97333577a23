"""How good are the maps (``evaluate``): deletion / insertion AUC and the randomization check.

Every input is checked before any expensive work; files are written through
:mod:`convsight.report` (whole files only). Images go through a chunk at a time (decoded when
reached, for a folder), so memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from convsight.attribution import Method
from convsight.attribution.lrp import composite_name
from convsight.data.images import ImageStream
from convsight.data.images import image_files as listed_images
from convsight.engines import AUTO, predict_classes
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, write_figure, write_json, write_npz
from convsight.report.notebook import Tile, figure_tile
from convsight.report.overlays import faithfulness_curves, sanity_plot
from convsight.runtime import seed_everything
from convsight.studies.attribution import (
    DEFAULT_METHODS,
    METRICS,
    check_methods,
    check_settings,
    notice_engines,
)
from convsight.studies.evaluation_chunks import (
    CURVES,
    Bar,
    Chunk,
    Protocol,
    advance_bar,
    evaluate_chunks,
    evaluate_methods,
    evaluate_with,
)
from convsight.studies.results import Result
from convsight.targets import OneTarget, parse_target, resolve_targets

__all__ = [
    "EvaluationRequest",
    "EvaluationResult",
    "Protocol",
    "evaluate_chunks",
    "evaluate",
    "evaluate_methods",
    "evaluate_with",
    "image_files",
    "write_evaluation",
]


def image_files(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The image files of a folder, sorted (the first ``limit``); a missing or empty folder is
    an input error."""
    files = listed_images(folder)
    return files[:limit] if limit else files


def _predicted(
    images: ImageStream,
    model: Model,
    protocol: Protocol,
    bar: Bar | None,
    methods: int,
    target: OneTarget | None = None,
) -> Iterator[Chunk]:
    """Each chunk's pixels (on the model's device) and each image's target: ``target``, or
    the class the model predicts for it; ``bar`` advances by ``methods`` for each file
    skipped."""
    for chunk in images:
        advance_bar(bar, advance=methods * len(chunk.skipped))
        if chunk.files:
            pixels = chunk.pixels.to(model.device)
            if target is not None:
                yield pixels, [target] * len(pixels)
            else:
                yield pixels, predict_classes(model, pixels, protocol.batch_size).tolist()


@dataclass(frozen=True)
class EvaluationRequest:
    """What :func:`write_evaluation` evaluates: ``methods`` on the images of the folder
    ``images`` (the first ``limit``), each attributed to ``target`` (one for every image:
    a class, ``margin:NAME``, ``segment:CLASS[:MASK.png]``, ``output:INDEX`` or a
    :class:`~convsight.targets.Target`; None: the class the model predicts for it), by
    ``metrics`` (deletion / insertion curves deleting or inserting ``step`` pixels a step;
    the sanity check on ``sanity_images`` images at ``sanity_stages`` stages). ``layer``,
    ``batch_size`` and ``engine`` are the methods' (and the curves') options, ``composite``
    LRP's (None: its default). ``model_name``
    (what the JSON calls the model; None: the card's name) and ``weights`` are only
    recorded."""

    images: str | os.PathLike
    methods: Sequence[str] = DEFAULT_METHODS
    metrics: Sequence[str] = ("deletion", "insertion", "sanity")
    layer: str | None = None
    step: int = 224
    limit: int | None = None
    batch_size: int | None = None
    engine: str = AUTO
    sanity_images: int = 4
    sanity_stages: int = 8
    seed: int = 0
    model_name: str | None = None
    weights: str | os.PathLike | None = None
    target: OneTarget | None = None
    composite: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            parse_target(self.target)  # its form, before any work
        if self.composite is not None:
            composite_name(self.composite)

    def chosen_target(self) -> OneTarget | None:
        """The target of every image (command-line text parsed); None: each one's class."""
        return parse_target(self.target) if isinstance(self.target, str) else self.target

    def protocol(self) -> Protocol:
        """How the maps are evaluated (8 images a chunk)."""
        return Protocol(
            tuple(self.metrics),
            self.step,
            8,
            self.batch_size,
            self.engine,
            self.sanity_images,
            self.sanity_stages,
            self.seed,
        )


@dataclass(kw_only=True)
class EvaluationResult(Result):
    """Each method's entry (options, how it ran, AUCs per image and their mean, mean curves,
    the sanity check, seconds per part), the images used and skipped, and the protocol:
    what ``evaluation.json`` holds."""

    model: str
    weights: str | None
    head: str
    images: list[Path]
    skipped: list[dict[str, str]]
    protocol: Protocol
    methods: dict[str, dict[str, Any]]
    targets: str = "the predicted class of each image"
    card_name: str = ""
    """The model card's name (the plots' titles; ``model`` is what the JSON calls it)."""

    @property
    def table(self) -> list[dict[str, Any]]:
        """A row per method: mean AUCs and the correlation once the model is randomized."""
        return _table(self.methods)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "head": self.head,
            "images": [str(p) for p in self.images],
            "skipped_images": self.skipped,
            "targets": self.targets,
            "settings": _settings(self.protocol),
            "table": self.table,
            "methods": self.methods,
        }

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write ``evaluation.json``, ``curves.png`` and ``curves.npz`` (deletion or
        insertion asked for) and ``sanity.png`` (the sanity check) into ``out``."""
        out = prepare_out_dir(out)
        files = [write_json(out / "evaluation.json", self.to_json())]
        curves = _curves(self.methods, self.protocol.metrics)
        if curves:
            files.append(write_figure(out / "curves.png", self._curves_figure(curves)))
            arrays = {
                f"{kind}_{name}": np.stack(xy)
                for kind, per in curves.items()
                for name, xy in per.items()
            }
            files.append(write_npz(out / "curves.npz", None, **arrays))
        if "sanity" in self.protocol.metrics:
            files.append(write_figure(out / "sanity.png", self._sanity_figure()))
        self.files = files
        return files

    def tiles(self) -> list[Tile]:
        """The deletion / insertion curves and the sanity plot, as asked for."""
        tiles = []
        curves = _curves(self.methods, self.protocol.metrics)
        if curves:
            tiles.append(figure_tile(self._curves_figure(curves), " and ".join(curves) + " curves"))
        if "sanity" in self.protocol.metrics:
            tiles.append(figure_tile(self._sanity_figure(), "model randomization"))
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The model, the images, the step and a line per method (its AUCs, its correlation
        once the model is randomized)."""
        facts: list[tuple[str, Any]] = [
            ("model", self.model),
            ("images", f"{len(self.images)} ({len(self.skipped)} skipped)"),
            ("step", f"{self.protocol.step} px"),
        ]
        for row in self.table:
            values = [
                f"{k.removesuffix('_auc')} AUC {v:.4f}"
                for k, v in row.items()
                if k.endswith("_auc")
            ]
            if "sanity_spearman_fully_randomized" in row:
                values.append(f"randomized r {row['sanity_spearman_fully_randomized']:.3f}")
            facts.append((row["method"], ", ".join(values)))
        return facts

    def _curves_figure(self, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> Figure:
        name = self.card_name or self.model
        title = f"{name}, {len(self.images)} images, step {self.protocol.step} px"
        runs = [e.get(f"{k}_run", {}) for e in self.methods.values() for k in curves]
        as_is = any(run.get("score") == "logit" for run in runs)  # not a class: as it is
        return faithfulness_curves(
            curves, title, f"score of {self.targets}" if as_is else "target probability"
        )

    def _sanity_figure(self) -> Figure:
        lines = {
            name: (
                [s["randomized_down_to"] for s in entry["sanity"]["stages"]],
                [s["spearman_mean"] for s in entry["sanity"]["stages"]],
            )
            for name, entry in self.methods.items()
        }
        return sanity_plot(lines, f"model randomization, {self.card_name or self.model}")


def evaluate(
    model: Model, request: EvaluationRequest, show_progress: bool = True
) -> EvaluationResult:
    """Evaluate methods on a folder of images (see :func:`write_evaluation`) and write nothing:
    ``result.save(folder)`` writes the files."""
    return _evaluated(model, request, _checked(model, request), show_progress)


def write_evaluation(
    model: Model,
    request: EvaluationRequest,
    out: str | os.PathLike = "runs/evaluate",
    show_progress: bool = True,
) -> EvaluationResult:
    """Evaluate methods on a folder of images; write ``evaluation.json`` and the plots.

    The target of each image is the class the model predicts (as in RISE). Writes
    ``evaluation.json`` (``result.to_json()``: a table of mean AUCs, per-image values, sanity
    correlations, every setting), ``curves.png`` and ``curves.npz``, and ``sanity.png`` when
    asked for (:meth:`EvaluationResult.save`).

    The folder is streamed 8 images at a time (:func:`evaluate_chunks`): memory is bounded by
    the chunk, and per image only scalars are kept (no map is written; ``curves.npz`` holds
    the mean curves). Unreadable files are skipped and listed; a folder with no readable
    image fails before any output.
    """
    checked = _checked(model, request)  # no readable image: an input error, before the folder
    out = prepare_out_dir(out)
    result = _evaluated(model, request, checked, show_progress)
    result.save(out)
    return result


_Checked = tuple[list[type[Method]], Protocol, ImageStream]


def _checked(model: Model, request: EvaluationRequest) -> _Checked:
    """Seed, then check every input (the folder must hold a readable image): the methods'
    classes, the protocol and the image stream."""
    seed_everything(request.seed)
    classes = check_methods(model, request.methods, request.layer)
    check_settings(request.batch_size, 1, 1, request.engine)
    protocol = request.protocol()
    _check_protocol(protocol)
    folder = ImageStream(image_files(request.images, request.limit), model.card, protocol.chunk)
    folder.check()
    if request.target is not None:  # names and masks checked against the model now
        resolve_targets(model, request.chosen_target(), 1)
    return classes, protocol, folder


def _evaluated(
    model: Model, request: EvaluationRequest, checked: _Checked, show_progress: bool
) -> EvaluationResult:
    """Run the checked evaluation; the result (nothing written)."""
    classes, protocol, folder = checked
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * len(folder.files), status="")
        target = request.chosen_target()
        chunks = _predicted(folder, model, protocol, (bar, task), len(classes), target)
        found = evaluate_chunks(
            model, chunks, classes, protocol, request.layer, (bar, task),
            composite=request.composite,
        )  # fmt: skip
    notice_engines(found, CURVES)
    return EvaluationResult(
        model=request.model_name or model.card.name,
        weights=str(request.weights) if request.weights else None,
        head=model.card.head,
        images=list(folder.kept),
        skipped=folder.skipped,
        protocol=protocol,
        methods=found["methods"],
        targets=_described(model, request),
        card_name=model.card.name,
    )


def _described(model: Model, request: EvaluationRequest) -> str:
    """What each image was explained by, for the JSON."""
    if request.target is None:
        return "the predicted class of each image"
    bound = resolve_targets(model, request.chosen_target(), 1)
    return bound.describe() if bound is not None else str(request.target)


def _check_protocol(protocol: Protocol) -> None:
    unknown = [m for m in protocol.metrics if m not in METRICS]
    if unknown or not protocol.metrics:
        raise ConvsightError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
            f"metrics: {', '.join(METRICS)}"
        )
    if protocol.step < 1:
        raise ConvsightError("--step must be at least one pixel")
    if protocol.sanity_images < 1 or protocol.sanity_stages < 1:
        raise ConvsightError("--sanity-images and --sanity-stages must be at least 1")


def _settings(protocol: Protocol) -> dict[str, Any]:
    return {
        "step_pixels": protocol.step,
        "deletion_baseline": "the model's mean colour (zero after normalization)",
        "insertion_start": "Gaussian blur, kernel 11, sigma 5",
        "batch_size": protocol.batch_size,
        "engine": protocol.engine,
        "sanity_images": protocol.sanity_images,
        "sanity_stages": protocol.sanity_stages,
        "seed": protocol.seed,
    }


def _table(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per method: mean AUCs and the correlation once the model is fully randomized."""
    table = []
    for name, entry in methods.items():
        row: dict[str, Any] = {"method": name}
        for kind in CURVES:
            if f"{kind}_auc" in entry:
                row[f"{kind}_auc"] = round(entry[f"{kind}_auc"], 4)
        if "sanity" in entry:
            row["sanity_spearman_fully_randomized"] = round(
                entry["sanity"]["stages"][-1]["spearman_mean"], 3
            )
        table.append(row)
    return table


def _mean_curve(curve: dict[str, Any]) -> list[float]:
    """A curve's mean values: probabilities of a class, or scores of another target."""
    return curve["mean_probability"] if "mean_probability" in curve else curve["mean_score"]


def _curves(
    methods: dict[str, dict[str, Any]], metrics: Sequence[str]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The mean deletion / insertion curve of each method (fraction, probability), as asked for."""
    return {
        kind: {
            name: (
                np.array(entry[f"{kind}_curve"]["fraction"]),
                np.array(_mean_curve(entry[f"{kind}_curve"])),
            )
            for name, entry in methods.items()
        }
        for kind in CURVES
        if kind in metrics
    }
