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

from convsight.data.images import ImageStream
from convsight.data.images import image_files as listed_images
from convsight.engines import AUTO, predict_classes
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, write_figure, write_json, write_npz
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

__all__ = [
    "EvaluationRequest",
    "EvaluationResult",
    "Protocol",
    "evaluate_chunks",
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
    images: ImageStream, model: Model, protocol: Protocol, bar: Bar | None, methods: int
) -> Iterator[Chunk]:
    """Each chunk's pixels (on the model's device) and the class the model predicts for each
    image; ``bar`` advances by ``methods`` for each file skipped."""
    for chunk in images:
        advance_bar(bar, advance=methods * len(chunk.skipped))
        if chunk.files:
            pixels = chunk.pixels.to(model.device)
            yield pixels, predict_classes(model, pixels, protocol.batch_size).tolist()


@dataclass(frozen=True)
class EvaluationRequest:
    """What :func:`write_evaluation` evaluates: ``methods`` on the images of the folder
    ``images`` (the first ``limit``), each attributed to the class the model predicts, by
    ``metrics`` (deletion / insertion curves deleting or inserting ``step`` pixels a step;
    the sanity check on ``sanity_images`` images at ``sanity_stages`` stages). ``layer``,
    ``batch_size`` and ``engine`` are the methods' (and the curves') options. ``model_name``
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
            "targets": "the predicted class of each image",
            "settings": _settings(self.protocol),
            "table": self.table,
            "methods": self.methods,
        }


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
    asked for.

    The folder is streamed 8 images at a time (:func:`evaluate_chunks`): memory is bounded by
    the chunk, and per image only scalars are kept (no map is written; ``curves.npz`` holds
    the mean curves). Unreadable files are skipped and listed; a folder with no readable
    image fails before any output.
    """
    seed_everything(request.seed)
    classes = check_methods(model, request.methods, request.layer)
    check_settings(request.batch_size, 1, 1, request.engine)
    protocol = request.protocol()
    _check_protocol(protocol)
    folder = ImageStream(image_files(request.images, request.limit), model.card, protocol.chunk)
    folder.check()  # no readable image: an input error, before the output folder exists
    out = prepare_out_dir(out)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * len(folder.files), status="")
        chunks = _predicted(folder, model, protocol, (bar, task), len(classes))
        found = evaluate_chunks(model, chunks, classes, protocol, request.layer, (bar, task))
    notice_engines(found, CURVES)
    result = EvaluationResult(
        model=request.model_name or model.card.name,
        weights=str(request.weights) if request.weights else None,
        head=model.card.head,
        images=list(folder.kept),
        skipped=folder.skipped,
        protocol=protocol,
        methods=found["methods"],
    )
    result.files = [write_json(out / "evaluation.json", result.to_json())]
    title = f"{model.card.name}, {len(folder.kept)} images, step {protocol.step} px"
    result.files += _write_plots(out, result.methods, protocol.metrics, title, model.card.name)
    return result


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


def _write_plots(
    out: Path,
    methods: dict[str, dict[str, Any]],
    metrics: Sequence[str],
    title: str,
    model_name: str,
) -> list[Path]:
    """``curves.png`` and ``curves.npz`` (mean curves), and ``sanity.png``, as asked for."""
    written = []
    curves = {
        kind: {
            name: (
                np.array(entry[f"{kind}_curve"]["fraction"]),
                np.array(entry[f"{kind}_curve"]["mean_probability"]),
            )
            for name, entry in methods.items()
        }
        for kind in CURVES
        if kind in metrics
    }
    if curves:
        written.append(write_figure(out / "curves.png", faithfulness_curves(curves, title)))
        arrays = {
            f"{kind}_{name}": np.stack(xy)
            for kind, per in curves.items()
            for name, xy in per.items()
        }
        written.append(write_npz(out / "curves.npz", None, **arrays))
    if "sanity" in metrics:
        lines = {
            name: (
                [s["randomized_down_to"] for s in entry["sanity"]["stages"]],
                [s["spearman_mean"] for s in entry["sanity"]["stages"]],
            )
            for name, entry in methods.items()
        }
        figure = sanity_plot(lines, f"model randomization, {model_name}")
        written.append(write_figure(out / "sanity.png", figure))
    return written
