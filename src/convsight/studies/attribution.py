"""Saliency panels and the evaluation of attribution methods (``saliency`` / ``evaluate``).

Both jobs check every input (model, weights, images, targets, methods, layer, settings) before
any expensive work, and write through :mod:`convsight.report` (whole files only).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convsight.attribution import CAM, Method, method_class
from convsight.data import load_image_tensor
from convsight.data.images import load_readable_images
from convsight.errors import ConvsightError
from convsight.layers import check_map_layers, get_layer
from convsight.metrics import deletion, insertion, model_randomization
from convsight.models import Model, load_model
from convsight.paths import require_folder
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
from convsight.report.overlays import faithfulness_curves, saliency_panel, sanity_plot
from convsight.runtime import seed_everything

DEFAULT_METHODS = ("saliency", "guided", "ig", "gradcam")
METRICS = ("deletion", "insertion", "sanity")
ENGINES = ("auto", "eager", "frozen")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def method_options(
    cls: type[Method],
    layer: str | None = None,
    ig_steps: int = 50,
    smoothgrad_samples: int = 16,
    occlusion_window: int = 16,
    occlusion_stride: int = 8,
    batch_size: int | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """The options the command line gives each method. ``engine`` "auto": incremental
    inference for occlusion, the module itself (eager) for everything else. ``batch_size``
    None: each method's own default."""
    name = cls.name
    batch = {} if batch_size is None else {"batch_size": batch_size}
    if issubclass(cls, CAM):
        options: dict[str, Any] = {"layer": layer}
        if name == "scorecam":
            options.update(engine=forward_engine(engine), **batch)
        return options
    if name == "ig":
        return {"steps": ig_steps, **batch}
    if name == "smoothgrad":
        return {"samples": smoothgrad_samples, **batch}
    if name == "occlusion":
        return {
            "window": occlusion_window,
            "stride": occlusion_stride,
            "engine": "incremental" if engine == "auto" else engine,
            **batch,
        }
    return {}


def forward_engine(engine: str) -> str:
    """The engine for plain forward passes (Score-CAM, deletion / insertion)."""
    return "eager" if engine == "auto" else engine


def _check_methods(model: Model, methods: Sequence[str], layer: str | None) -> list[type[Method]]:
    if not methods:
        raise ConvsightError("no method given; methods: saliency, ixg, smoothgrad, ig, ...")
    classes = [method_class(m) for m in methods]
    if len({c.name for c in classes}) != len(classes):
        raise ConvsightError("a method is given twice")
    if layer is not None:
        get_layer(model.module, layer)
        if not any(issubclass(c, CAM) for c in classes):
            raise ConvsightError("--layer is for the CAM methods (gradcam, gradcam++, scorecam)")
        check_map_layers(
            model.module, [layer], model.example_input(), "; a CAM needs a conv layer (--layer)"
        )
    if model.card.features_only or not model.card.num_classes:
        raise ConvsightError(f"model '{model.card.name}' has no class scores to attribute")
    return classes


def _check_settings(batch_size: int | None, ig_steps: int, samples: int, engine: str) -> None:
    if (batch_size is not None and batch_size < 1) or ig_steps < 1 or samples < 1:
        raise ConvsightError("batch size, IG steps and SmoothGrad samples must be at least 1")
    if engine not in ENGINES:
        raise ConvsightError(f"unknown engine '{engine}' ({', '.join(ENGINES)})")


def _targets(model: Model, target: Sequence[str] | None, count: int) -> list[int] | None:
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
    ``saliency.npz`` (per method: the raw attributions and the N x H x W maps) and
    ``saliency.json``. ``target``: one class for all images, or one per image; default: the
    predicted class.
    """
    seed_everything(seed)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    classes = _check_methods(loaded, methods, layer)
    _check_settings(batch_size, ig_steps, smoothgrad_samples, engine)
    if not images:
        raise ConvsightError("no image given: pass --image FILE (one or more)")
    paths = [Path(p) for p in images]
    pixels = torch.cat([load_image_tensor(p, loaded.card) for p in paths]).to(loaded.device)
    targets = _targets(loaded, target, len(paths))
    panels = panel_names(paths)
    out = prepare_out_dir(out)

    with torch.no_grad():
        probs = loaded.module(loaded.normalize(pixels)).softmax(1)
    predicted = probs.argmax(1).tolist()
    targets = targets or predicted
    heatmaps: dict[str, torch.Tensor] = {}
    arrays: dict[str, Any] = {"pixels": pixels, "targets": torch.tensor(targets)}
    timings: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}  # how each method ran: engine, fallback, memory format
    with progress_bar(show_progress) as bar:
        task = bar.add_task("saliency", total=len(classes), status="")
        for cls in classes:
            bar.update(task, status=cls.name)
            method = cls(loaded)
            options = method_options(
                cls, layer, ig_steps, smoothgrad_samples, batch_size=batch_size, engine=engine
            )
            if issubclass(cls, CAM):
                options["layer"] = method.layer_name(layer)  # type: ignore[attr-defined]
            start = time.perf_counter()
            raw = method.attribute(pixels, targets, **options)
            timings[cls.name] = time.perf_counter() - start
            runs[cls.name] = dict(method.last_run)
            heatmaps[cls.title] = method.to_heatmap(raw)
            arrays[f"{cls.name}_attributions"] = raw
            arrays[f"{cls.name}_map"] = heatmaps[cls.title]
            settings[cls.name] = options
            bar.advance(task)

    titles = []
    for i, path in enumerate(paths):
        t = targets[i]
        titles.append(f"{path.stem[:24]}\n{loaded.card.label(t)[:22]} p={float(probs[i, t]):.2f}")
    written = []
    for i, panel in enumerate(panels):
        one = {name: maps[i : i + 1] for name, maps in heatmaps.items()}
        figure = saliency_panel(pixels[i : i + 1], one, [titles[i]])
        written.append(write_figure(out_file(out, panel), figure, within=out))
    figure = saliency_panel(pixels, heatmaps, titles, title=f"{loaded.card.name}")
    written.append(write_figure(out / "saliency.png", figure))
    written.append(write_npz(out / "saliency.npz", **arrays))
    summary = {
        "model": model if isinstance(model, str) else loaded.card.name,
        "weights": str(weights) if weights else None,
        "images": [str(p) for p in paths],
        "panels": [{"image": str(p), "file": f} for p, f in zip(paths, panels, strict=True)],
        "targets": [{"class": t, "label": loaded.card.label(t)} for t in targets],
        "target_probability": [float(probs[i, t]) for i, t in enumerate(targets)],
        "predicted": [{"class": p, "label": loaded.card.label(p)} for p in predicted],
        "methods": {
            cls.name: {
                "title": cls.title,
                "reference": (cls.__doc__ or "").split("https://")[-1].split()[0],
                "options": settings[cls.name],
                "run": runs[cls.name],
                "seconds": timings[cls.name],
            }
            for cls in classes
        },
        "seed": seed,
    }
    written.append(write_json(out / "saliency.json", summary))
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

    Images go ``chunk`` at a time through each method and then through the curves.
    """
    n = pixels.shape[0]
    result: dict[str, Any] = {"methods": {}}
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * n, status="")
        for cls in classes:
            options = method_options(
                cls, layer, batch_size=batch_size, engine=engine, **option_settings
            )
            entry: dict[str, Any] = {"options": options, "seconds": {}}
            aucs: dict[str, list[float]] = {m: [] for m in metrics if m != "sanity"}
            sums: dict[str, torch.Tensor] = {}
            fractions: dict[str, torch.Tensor] = {}
            seconds = {"attribution": 0.0, **{m: 0.0 for m in aucs}}
            method = cls(model)
            for start in range(0, n, chunk):
                bar.update(task, status=f"{cls.name} images {start + 1}-{min(start + chunk, n)}")
                x = pixels[start : start + chunk]
                t = list(targets[start : start + chunk])
                began = time.perf_counter()
                torch.manual_seed(seed + start)
                heat = method.heatmap(x, t, **options)
                seconds["attribution"] += time.perf_counter() - began
                _keep_run(entry, "run", method.last_run)
                for kind in aucs:
                    began = time.perf_counter()
                    run = deletion if kind == "deletion" else insertion
                    curves = run(
                        model,
                        x,
                        heat,
                        t,
                        step=step,
                        batch_size=batch_size or 16,
                        engine=forward_engine(engine),
                    )
                    seconds[kind] += time.perf_counter() - began
                    _keep_run(entry, f"{kind}_run", curves.run)
                    aucs[kind].extend(curves.auc.tolist())
                    sums[kind] = sums.get(kind, 0) + curves.scores.sum(0)
                    fractions[kind] = curves.fractions
                bar.advance(task, len(t))
            for kind, values in aucs.items():
                entry[f"{kind}_auc"] = float(np.mean(values))
                entry[f"{kind}_auc_std"] = float(np.std(values))
                entry[f"{kind}_auc_per_image"] = values
                entry[f"{kind}_curve"] = {
                    "fraction": fractions[kind].tolist(),
                    "mean_probability": (sums[kind] / n).tolist(),
                }
            if "sanity" in metrics:
                began = time.perf_counter()
                k = min(sanity_images, n)
                sanity = model_randomization(
                    model,
                    cls,
                    pixels[:k],
                    list(targets[:k]),
                    seed=seed,
                    stages=sanity_stages,
                    **options,
                )
                seconds["sanity"] = time.perf_counter() - began
                entry["sanity"] = sanity.to_dict()
            entry["seconds"] = seconds
            result["methods"][cls.name] = entry
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
    classes = _check_methods(loaded, methods, layer)
    _check_settings(batch_size, 1, 1, engine)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConvsightError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
            f"metrics: {', '.join(METRICS)}"
        )
    if step < 1:
        raise ConvsightError("--step must be at least one pixel")
    if sanity_images < 1 or sanity_stages < 1:
        raise ConvsightError("--sanity-images and --sanity-stages must be at least 1")
    pixels, files, skipped = load_readable_images(image_files(images, limit), loaded.card)
    pixels = pixels.to(loaded.device)
    out = prepare_out_dir(out)
    with torch.no_grad():
        predicted = loaded.module(loaded.normalize(pixels)).argmax(1).tolist()
    result = evaluate_methods(
        loaded,
        pixels,
        predicted,
        classes,
        metrics,
        layer=layer,
        step=step,
        batch_size=batch_size,
        engine=engine,
        sanity_images=sanity_images,
        sanity_stages=sanity_stages,
        seed=seed,
        show_progress=show_progress,
    )
    table = []
    for name, entry in result["methods"].items():
        row = {"method": name}
        for kind in ("deletion", "insertion"):
            if f"{kind}_auc" in entry:
                row[f"{kind}_auc"] = round(entry[f"{kind}_auc"], 4)
        if "sanity" in entry:
            row["sanity_spearman_fully_randomized"] = round(
                entry["sanity"]["stages"][-1]["spearman_mean"], 3
            )
        table.append(row)
    summary = {
        "model": model if isinstance(model, str) else loaded.card.name,
        "weights": str(weights) if weights else None,
        "images": [str(p) for p in files],
        "skipped_images": skipped,
        "targets": "the predicted class of each image",
        "settings": {
            "step_pixels": step,
            "deletion_baseline": "the model's mean colour (zero after normalization)",
            "insertion_start": "Gaussian blur, kernel 11, sigma 5",
            "batch_size": batch_size,
            "engine": engine,
            "sanity_images": sanity_images,
            "sanity_stages": sanity_stages,
            "seed": seed,
        },
        "table": table,
        **result,
    }
    written = [write_json(out / "evaluation.json", summary)]
    curves = {
        kind: {
            name: (
                np.array(entry[f"{kind}_curve"]["fraction"]),
                np.array(entry[f"{kind}_curve"]["mean_probability"]),
            )
            for name, entry in result["methods"].items()
        }
        for kind in ("deletion", "insertion")
        if kind in metrics
    }
    if curves:
        title = f"{loaded.card.name}, {len(files)} images, step {step} px"
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
            for name, entry in result["methods"].items()
        }
        figure = sanity_plot(lines, f"model randomization, {loaded.card.name}")
        written.append(write_figure(out / "sanity.png", figure))
    return written
