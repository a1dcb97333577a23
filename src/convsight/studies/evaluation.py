"""How good are the maps (``evaluate``): deletion / insertion AUC and the randomization check.

Every input is checked before any expensive work; files are written through
:mod:`convsight.report` (whole files only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TaskID

from convsight.attribution import Method
from convsight.data.folder import IMAGE_SUFFIXES
from convsight.data.images import load_readable_images
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
    notice_engine,
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
    engine: str = "auto"
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


def evaluate_method(
    model: Model,
    pixels: torch.Tensor,
    targets: Sequence[int],
    cls: type[Method],
    options: dict[str, Any],
    protocol: Protocol,
    progress: tuple[Progress, TaskID] | None = None,
) -> dict[str, Any]:
    """One method's entry: its options, how it ran, the curves' AUCs (mean, spread, per
    image) and mean curves, the sanity check, and seconds per part. ``progress`` (a bar and
    its task) advances by each chunk of images."""
    n = pixels.shape[0]
    entry: dict[str, Any] = {"options": options, "seconds": {}}
    curves = {kind: _Curves() for kind in protocol.metrics if kind != "sanity"}
    seconds = {"attribution": 0.0, **{kind: 0.0 for kind in curves}}
    method = cls(model)
    for start in range(0, n, protocol.chunk):
        if progress is not None:
            status = f"{cls.name} images {start + 1}-{min(start + protocol.chunk, n)}"
            progress[0].update(progress[1], status=status)
        x = pixels[start : start + protocol.chunk]
        t = list(targets[start : start + protocol.chunk])
        began = time.perf_counter()
        torch.manual_seed(protocol.seed + start)
        heat = method.heatmap(x, t, **options)
        seconds["attribution"] += time.perf_counter() - began
        _keep_run(entry, "run", method.last_run)
        for kind, total in curves.items():
            began = time.perf_counter()
            found = _curve(kind, model, x, heat, t, protocol)
            seconds[kind] += time.perf_counter() - began
            _keep_run(entry, f"{kind}_run", found.run)
            total.add(found)
        if progress is not None:
            progress[0].advance(progress[1], len(t))
    for kind, total in curves.items():
        entry.update(total.entry(kind, n))
    if "sanity" in protocol.metrics:
        began = time.perf_counter()
        k = min(protocol.sanity_images, n)
        sanity = model_randomization(
            model,
            cls,
            pixels[:k],
            list(targets[:k]),
            seed=protocol.seed,
            stages=protocol.sanity_stages,
            **options,
        )
        seconds["sanity"] = time.perf_counter() - began
        entry["sanity"] = sanity.to_dict()
    entry["seconds"] = seconds
    return entry


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
    engine: str = "auto",
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
    result: dict[str, Any] = {"methods": {}}
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * pixels.shape[0], status="")
        for cls in classes:
            options = method_options(
                cls,
                layer,
                batch_size=protocol.batch_size,
                engine=protocol.engine,
                **option_settings,
            )
            result["methods"][cls.name] = evaluate_method(
                model, pixels, targets, cls, options, protocol, (bar, task)
            )
    for name, entry in result["methods"].items():  # after the bar: one line each
        notice_engine(name, entry.get("run"))
        for kind in CURVES:
            notice_engine(f"{name}'s {kind} curve", entry.get(f"{kind}_run"))
    return result


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
    engine: str = "auto",
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
    """
    seed_everything(seed)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    classes = check_methods(loaded, methods, layer)
    check_settings(batch_size, 1, 1, engine)
    protocol = Protocol(
        tuple(metrics), step, 8, batch_size, engine, sanity_images, sanity_stages, seed
    )
    _check_protocol(protocol)
    pixels, files, skipped = load_readable_images(image_files(images, limit), loaded.card)
    pixels = pixels.to(loaded.device)
    out = prepare_out_dir(out)
    with torch.no_grad():
        predicted = loaded.module(loaded.normalize(pixels)).argmax(1).tolist()
    result = evaluate_with(loaded, pixels, predicted, classes, protocol, layer, show_progress)
    summary = {
        "model": model if isinstance(model, str) else loaded.card.name,
        "weights": str(weights) if weights else None,
        "head": loaded.card.head,
        "images": [str(p) for p in files],
        "skipped_images": skipped,
        "targets": "the predicted class of each image",
        "settings": _settings(protocol),
        "table": _table(result["methods"]),
        **result,
    }
    written = [write_json(out / "evaluation.json", summary)]
    title = f"{loaded.card.name}, {len(files)} images, step {step} px"
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
