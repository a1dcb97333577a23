"""How good are the maps (``evaluate``): deletion / insertion AUC and the randomization check.

Every input is checked before any expensive work; files are written through
:mod:`convsight.report` (whole files only). Images go through a chunk at a time (decoded when
reached, for a folder), so memory does not grow with the number of images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TaskID

from convsight.attribution import Method
from convsight.data.folder import IMAGE_SUFFIXES
from convsight.data.images import ImageStream
from convsight.engines import AUTO, predict_classes
from convsight.errors import ConvsightError
from convsight.metrics import Curves, deletion, insertion, model_randomization
from convsight.models import Model, load_model
from convsight.paths import require_folder
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, write_figure, write_json, write_npz
from convsight.report.overlays import faithfulness_curves, sanity_plot
from convsight.runtime import seed_everything
from convsight.studies.attribution import (
    DEFAULT_METHODS,
    METRICS,
    check_methods,
    check_settings,
    forward_engine,
    method_options,
    notice_engines,
)

CURVES = {"deletion": deletion, "insertion": insertion}


@dataclass(frozen=True)
class Protocol:
    """How maps are evaluated: the metrics, the curves' step (pixels per step), batch size
    and engine, the sanity check's images and stages, the seed, and ``chunk`` images at a
    time through each method and its curves."""

    metrics: Sequence[str] = ("deletion", "insertion")
    step: int = 224
    chunk: int = 8
    batch_size: int | None = None
    engine: str = AUTO
    sanity_images: int = 4
    sanity_stages: int = 8
    seed: int = 0


@dataclass
class _Curves:
    """One curve kind's running totals over chunks of images."""

    aucs: list[float] = field(default_factory=list)
    sums: Any = 0
    fractions: torch.Tensor | None = None

    def add(self, curves: Curves) -> None:
        self.aucs.extend(curves.auc.tolist())
        self.sums = self.sums + curves.scores.sum(0)
        self.fractions = curves.fractions

    def entry(self, kind: str, images: int) -> dict[str, Any]:
        return {
            f"{kind}_auc": float(np.mean(self.aucs)),
            f"{kind}_auc_std": float(np.std(self.aucs)),
            f"{kind}_auc_per_image": self.aucs,
            f"{kind}_curve": {
                "fraction": self.fractions.tolist() if self.fractions is not None else [],
                "mean_probability": (self.sums / images).tolist(),
            },
        }


def image_files(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The image files of a folder, sorted; a missing or empty folder is an input error."""
    folder = require_folder(folder, "image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConvsightError(f"no images in {folder}")
    return files[:limit] if limit else files


def _keep_run(entry: dict[str, Any], key: str, run: dict[str, Any]) -> None:
    """Record how a method or curve ran; across chunks, the first run with a fallback wins."""
    if key not in entry or (run.get("fallback") and not entry[key].get("fallback")):
        entry[key] = dict(run)


def _curve(
    kind: str,
    model: Model,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    targets: list[int],
    protocol: Protocol,
) -> Curves:
    return CURVES[kind](
        model,
        pixels,
        maps,
        targets,
        step=protocol.step,
        batch_size=protocol.batch_size or 16,
        engine=forward_engine(protocol.engine),
    )


Chunk = tuple[torch.Tensor, list[int]]
"""Pixels of up to ``Protocol.chunk`` images (N x C x H x W) and their target classes."""

Bar = tuple[Progress, TaskID]


@dataclass
class _MethodRun:
    """One method over the chunks: its instance and options, the entry that says how it ran,
    the curves' running totals and the seconds spent per part."""

    method: Method
    options: dict[str, Any]
    entry: dict[str, Any]
    curves: dict[str, _Curves]
    seconds: dict[str, float]

    @classmethod
    def start(
        cls, model: Model, method: type[Method], options: dict[str, Any], protocol: Protocol
    ) -> _MethodRun:
        curves = {kind: _Curves() for kind in protocol.metrics if kind != "sanity"}
        seconds = {"attribution": 0.0, **{kind: 0.0 for kind in curves}}
        return cls(method(model), options, {"options": options, "seconds": {}}, curves, seconds)

    def add(self, model: Model, chunk: Chunk, start: int, protocol: Protocol) -> None:
        """The maps and curves of one chunk (images ``start`` on), added to the totals; the
        maps and curves themselves are dropped."""
        pixels, targets = chunk
        began = time.perf_counter()
        torch.manual_seed(protocol.seed + start)
        heat = self.method.heatmap(pixels, targets, **self.options)
        self.seconds["attribution"] += time.perf_counter() - began
        _keep_run(self.entry, "run", self.method.last_run)
        for kind, total in self.curves.items():
            began = time.perf_counter()
            found = _curve(kind, model, pixels, heat, targets, protocol)
            self.seconds[kind] += time.perf_counter() - began
            _keep_run(self.entry, f"{kind}_run", found.run)
            total.add(found)

    def finish(
        self, model: Model, sanity: Chunk | None, images: int, protocol: Protocol
    ) -> dict[str, Any]:
        """The method's entry: options, runs, AUCs and mean curves over ``images`` images,
        the sanity check on ``sanity`` (seeded with ``protocol.seed``), seconds per part."""
        for kind, total in self.curves.items():
            self.entry.update(total.entry(kind, images))
        if sanity is not None:
            began = time.perf_counter()
            torch.manual_seed(protocol.seed)
            result = model_randomization(
                model,
                type(self.method),
                sanity[0],
                sanity[1],
                seed=protocol.seed,
                stages=protocol.sanity_stages,
                **self.options,
            )
            self.seconds["sanity"] = time.perf_counter() - began
            self.entry["sanity"] = result.to_dict()
        self.entry["seconds"] = self.seconds
        return self.entry


def _step(bar: Bar | None, status: str | None = None, advance: int = 0) -> None:
    if bar is not None:
        bar[0].update(bar[1], advance=advance, **({"status": status} if status else {}))


def evaluate_chunks(
    model: Model,
    chunks: Iterable[Chunk],
    classes: Sequence[type[Method]],
    protocol: Protocol,
    layer: str | None = None,
    bar: Bar | None = None,
    **option_settings: Any,
) -> dict[str, Any]:
    """Every method over ``chunks`` (``protocol.chunk`` images each, in order), a chunk at a
    time: ``{"methods": {name: entry}}``.

    Each chunk goes through every method and its curves and is then dropped; only running
    totals, one AUC per image and the first ``protocol.sanity_images`` images (for the sanity
    check, run once all chunks are done) are kept, so memory is bounded by the chunk whatever
    the number of images. ``bar`` (a progress bar and its task) advances by each chunk.
    """
    runs = {}
    for cls in classes:
        options = method_options(
            cls, layer, batch_size=protocol.batch_size, engine=protocol.engine, **option_settings
        )
        runs[cls.name] = _MethodRun.start(model, cls, options, protocol)
    first: list[torch.Tensor] = []  # the sanity check's images
    targets: list[int] = []
    wanted = protocol.sanity_images if "sanity" in protocol.metrics else 0
    images = 0
    for chunk in chunks:
        count = len(chunk[1])
        if len(targets) < wanted:
            first.append(chunk[0][: wanted - len(targets)].clone())  # not a view of the chunk
            targets += chunk[1][: wanted - len(targets)]
        for name, run in runs.items():
            _step(bar, f"{name} images {images + 1}-{images + count}")
            run.add(model, chunk, images, protocol)
            _step(bar, advance=count)
        images += count
    if not images:
        raise ConvsightError("no image to evaluate")
    sanity = (torch.cat(first), targets) if first else None
    entries = {name: run.finish(model, sanity, images, protocol) for name, run in runs.items()}
    return {"methods": entries}


def evaluate_methods(
    model: Model,
    pixels: torch.Tensor,
    targets: Sequence[int],
    classes: Sequence[type[Method]],
    metrics: Sequence[str] = ("deletion", "insertion"),
    layer: str | None = None,
    step: int = 224,
    chunk: int = 8,
    batch_size: int | None = None,
    engine: str = AUTO,
    sanity_images: int = 4,
    sanity_stages: int = 8,
    seed: int = 0,
    show_progress: bool = False,
    **option_settings: Any,
) -> dict[str, Any]:
    """Deletion / insertion AUC per image and method, mean curves, and the sanity check.

    Images go ``chunk`` at a time through each method and then through the curves; each
    method runs with the options :func:`~convsight.studies.attribution.method_options` gives
    it from ``layer``, ``batch_size``, ``engine`` and ``option_settings``.
    """
    protocol = Protocol(
        tuple(metrics), step, chunk, batch_size, engine, sanity_images, sanity_stages, seed
    )
    return evaluate_with(
        model, pixels, targets, classes, protocol, layer, show_progress, **option_settings
    )


def evaluate_with(
    model: Model,
    pixels: torch.Tensor,
    targets: Sequence[int],
    classes: Sequence[type[Method]],
    protocol: Protocol,
    layer: str | None = None,
    show_progress: bool = False,
    **option_settings: Any,
) -> dict[str, Any]:
    """:func:`evaluate_methods` for a :class:`Protocol`: ``{"methods": {name: entry}}``."""
    size = protocol.chunk
    chunks = (
        (pixels[start : start + size], list(targets[start : start + size]))
        for start in range(0, pixels.shape[0], size)
    )
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * pixels.shape[0], status="")
        result = evaluate_chunks(
            model, chunks, classes, protocol, layer, (bar, task), **option_settings
        )
    notice_engines(result, CURVES)
    return result


def _predicted(
    images: ImageStream, model: Model, protocol: Protocol, bar: Bar | None, methods: int
) -> Iterator[Chunk]:
    """Each chunk's pixels (on the model's device) and the class the model predicts for each
    image; ``bar`` advances by ``methods`` for each file skipped."""
    for chunk in images:
        _step(bar, advance=methods * len(chunk.skipped))
        if chunk.files:
            pixels = chunk.pixels.to(model.device)
            yield pixels, predict_classes(model, pixels, protocol.batch_size).tolist()


def write_evaluation(
    model: str | Model,
    images: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = ("deletion", "insertion", "sanity"),
    layer: str | None = None,
    step: int = 224,
    limit: int | None = None,
    batch_size: int | None = None,
    engine: str = AUTO,
    sanity_images: int = 4,
    sanity_stages: int = 8,
    out: Path = Path("runs/evaluate"),
    seed: int = 0,
    show_progress: bool = True,
) -> list[Path]:
    """Evaluate methods on a folder of images; write ``evaluation.json`` and the plots.

    The target of each image is the class the model predicts (as in RISE). Writes
    ``evaluation.json`` (a table of mean AUCs, per-image values, sanity correlations, every
    setting), ``curves.png`` and ``curves.npz``, and ``sanity.png`` when asked for.

    The folder is streamed 8 images at a time (:func:`evaluate_chunks`): memory is bounded by
    the chunk, and per image only scalars are kept (no map is written; ``curves.npz`` holds
    the mean curves). Unreadable files are skipped and listed; a folder with no readable
    image fails before any output.
    """
    seed_everything(seed)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    classes = check_methods(loaded, methods, layer)
    check_settings(batch_size, 1, 1, engine)
    protocol = Protocol(
        tuple(metrics), step, 8, batch_size, engine, sanity_images, sanity_stages, seed
    )
    _check_protocol(protocol)
    folder = ImageStream(image_files(images, limit), loaded.card, protocol.chunk)
    folder.check()  # no readable image: an input error, before the output folder exists
    out = prepare_out_dir(out)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * len(folder.files), status="")
        chunks = _predicted(folder, loaded, protocol, (bar, task), len(classes))
        result = evaluate_chunks(loaded, chunks, classes, protocol, layer, (bar, task))
    notice_engines(result, CURVES)
    summary = {
        "model": model if isinstance(model, str) else loaded.card.name,
        "weights": str(weights) if weights else None,
        "head": loaded.card.head,
        "images": [str(p) for p in folder.kept],
        "skipped_images": folder.skipped,
        "targets": "the predicted class of each image",
        "settings": _settings(protocol),
        "table": _table(result["methods"]),
        **result,
    }
    written = [write_json(out / "evaluation.json", summary)]
    title = f"{loaded.card.name}, {len(folder.kept)} images, step {step} px"
    written += _write_plots(out, result["methods"], metrics, title, loaded.card.name)
    return written


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
        written.append(write_npz(out / "curves.npz", **arrays))
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
