"""An atlas of a model's channels: a static site, resumable, every file written whole.

Layout of ``out``: ``index.html``; per layer ``<layer>/index.html`` (all channels, dead ones
marked, filter redundancy) and ``<layer>/c<k>.html`` (visualizations, top dataset examples
with their receptive-field patch, activation histogram, most similar filters). A channel is
done when ``<layer>/records/c<k>.json`` exists; a restarted run skips done channels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

import convsight
from convsight.analysis.dataset_examples import receptive_field, top_examples
from convsight.analysis.filters import filter_redundancy
from convsight.data.folder import IMAGE_SUFFIXES
from convsight.data.images import load_image, to_model_pixels
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to, get_layer
from convsight.models import Model, load_model
from convsight.optvis.render import render_channels, settings_for
from convsight.progress import progress_bar
from convsight.report import prepare_out_dir, write_figure, write_json, write_npz, write_text
from convsight.report.html import environment, write_page
from convsight.report.images import examples_strip, write_image, write_pil
from convsight.runtime import seed_everything


def dataset_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (flat or one level of class folders), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvsightError(f"dataset folder {folder} does not exist")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ConvsightError(f"no images in dataset folder {folder}")
    return files


def load_dataset(
    model: Model, files: Sequence[Path], root: Path
) -> tuple[torch.Tensor, list[str], list]:
    """Pixels of every readable file for the model; unreadable ones are reported and left out.

    Names are paths relative to ``root`` (so a class folder shows as ``class/file``).
    """
    pixels, names, skipped = [], [], []
    for path in files:
        try:
            pixels.append(to_model_pixels(load_image(path), model.card, str(path)))
            names.append(str(path.relative_to(root)))
        except ConvsightError as exc:
            skipped.append({"path": str(path), "reason": str(exc)})
    if not pixels:
        raise ConvsightError("no image of the dataset could be read for this model")
    return torch.stack(pixels), names, skipped


def remove_partial_files(out: Path) -> int:
    """Delete temporary files left by an interrupted run (they never replaced a real file)."""
    count = 0
    for tmp in out.rglob(".*.part"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def _redundancy_figure(curve: list[tuple[float, int]], total: int, layer: str) -> Figure:
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot([t for t, _ in curve], [n for _, n in curve], "o-")
    ax.axhline(total, color="grey", lw=1, ls="--")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("filters left")
    ax.set_title(f"{layer}: {total} filters")
    ax.grid(alpha=0.3)
    return fig


def build_atlas(
    model: str,
    layers: Sequence[str],
    out: Path,
    weights: str | os.PathLike | None = None,
    dataset: str | os.PathLike | None = None,
    top_k: int = 9,
    presets: Sequence[str] = ("paper", "robust"),
    steps: int | None = None,
    size: int | None = None,
    batch: int = 16,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Render every channel of ``layers`` (each preset), find dataset examples, write the site."""
    if not layers:
        raise ConvsightError("give at least one layer (--layers)")
    if top_k < 1 or batch < 1:
        raise ConvsightError("--top-k and --batch must be at least 1")
    presets = list(dict.fromkeys(presets))
    settings = {p: settings_for(p, steps=steps, size=size) for p in presets}
    seed_everything(seed)
    loaded = load_model(model, weights)
    check_layers(loaded.module, layers)
    with torch.no_grad():
        outputs = forward_to(loaded.module, loaded.example_input(), list(layers))
    for name, value in outputs.items():
        if value.dim() != 4:
            raise ConvsightError(f"layer '{name}' outputs {tuple(value.shape[1:])}, not channels")
    files = dataset_images(dataset) if dataset is not None else []
    pixels, names, skipped = load_dataset(loaded, files, Path(dataset)) if files else (None, [], [])
    out = prepare_out_dir(out)
    remove_partial_files(out)
    write_text(out / "style.css", environment().get_template("style.css").render())

    start = time.perf_counter()
    rendered = 0
    total = sum(int(outputs[name].shape[1]) for name in layers)
    layer_rows = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task("atlas", total=total, status="")
        for name in layers:
            count = int(outputs[name].shape[1])
            folder = out / name
            records = folder / "records"
            examples = (
                _examples(loaded, name, pixels, top_k, folder) if pixels is not None else None
            )
            field = receptive_field(loaded, name) if pixels is not None else None
            todo = [c for c in range(count) if not (records / f"c{c}.json").exists()]
            bar.update(task, advance=count - len(todo), status=f"{name}")
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                results = {
                    p: render_channels(loaded, name, chunk, preset=p, seed=seed, **_overrides(s))
                    for p, s in settings.items()
                }
                for row, channel in enumerate(chunk):
                    values = {}
                    for p, result in results.items():
                        write_image(folder / "img" / f"c{channel}_{p}.png", result.images[row], 112)
                        values[p] = float(result.values[row])
                    dead_from = results["paper"] if "paper" in results else results[presets[0]]
                    record = {
                        "channel": channel,
                        "values": values,
                        "dead": row in dead_from.dead,
                        "rendered_at": time.time(),
                    }
                    if examples is not None:
                        record["examples"] = _write_examples(
                            folder, channel, examples, field, pixels, names
                        )
                    write_json(records / f"c{channel}.json", record)
                    rendered += 1
                    bar.update(task, advance=1)
            layer_rows.append(_layer_pages(loaded, name, count, folder, presets, len(names)))
    render_seconds = time.perf_counter() - start
    summary = {
        "model": loaded.card.name,
        "weights": str(weights) if weights else None,
        "layers": [{k: v for k, v in r.items() if k != "channel_rows"} for r in layer_rows],
        "presets": presets,
        "render_settings": {p: s.to_dict() for p, s in settings.items()},
        "dataset": str(dataset) if dataset else None,
        "dataset_size": len(names),
        "skipped_images": skipped,
        "top_k": top_k,
        "seed": seed,
        "channels": total,
        "rendered_this_run": rendered,
        "seconds_this_run": render_seconds,
        "seconds_per_channel": render_seconds / rendered if rendered else None,
    }
    write_page(
        out / "index.html",
        "atlas_index.html",
        root="",
        version=convsight.__version__,
        model=loaded.card.name,
        source=loaded.card.source,
        layers=layer_rows,
        presets=presets,
        dataset=summary["dataset"],
        dataset_size=len(names),
        top_k=top_k,
        seed=seed,
        render_settings={p: _short(s.to_dict()) for p, s in settings.items()},
    )
    write_json(out / "atlas.json", summary)
    return summary


def _overrides(settings) -> dict[str, Any]:
    return {"steps": settings.steps, "size": settings.size}


def _short(settings: dict[str, Any]) -> str:
    keys = ("steps", "size", "param", "optimizer", "lr", "jitter", "l1")
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)


def _load_npz(path: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    with np.load(path) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def _examples(model: Model, layer: str, pixels: torch.Tensor, top_k: int, folder: Path):
    """Top dataset examples of every channel of ``layer``; computed once, then read back."""
    cache = folder / "examples.npz"
    if cache.exists():
        return _load_npz(cache)
    found = top_examples(model, pixels, layer, top_k=top_k)
    data = {
        "top_images": found.top_images,
        "top_values": found.top_values,
        "top_positions": found.top_positions,
        "max_per_image": found.max_per_image,
    }
    write_npz(cache, **data)
    return data


def _write_examples(folder, channel, examples, field, pixels, names) -> list[dict[str, Any]]:
    chosen = examples["top_images"][channel].tolist()
    positions = examples["top_positions"][channel].tolist()
    boxes = [field.box(y, x) for y, x in positions]
    strip = examples_strip([pixels[i] for i in chosen], boxes)
    write_pil(folder / "img" / f"c{channel}_examples.png", strip)
    values = examples["top_values"][channel].tolist()
    return [
        {"name": names[i], "value": v, "box": b}
        for i, v, b in zip(chosen, values, boxes, strict=True)
    ]


def _layer_pages(
    model: Model, name: str, count: int, folder: Path, presets: list[str], dataset_size: int
) -> dict[str, Any]:
    module = get_layer(model.module, name)
    redundancy = filter_redundancy(model.module, name) if isinstance(module, nn.Conv2d) else None
    if redundancy is not None and not (folder / "redundancy.png").exists():
        write_figure(folder / "redundancy.png", _redundancy_figure(redundancy.curve(), count, name))
    records = [json.loads((folder / "records" / f"c{c}.json").read_text()) for c in range(count)]
    histograms = None
    if (folder / "examples.npz").exists():
        histograms = _load_npz(folder / "examples.npz")["max_per_image"]
    rows = []
    for c, record in enumerate(records):
        row = {
            "index": c,
            "dead": record["dead"],
            "objective": record["values"],
            "examples": record.get("examples", []),
            "histogram": histograms[c].tolist() if histograms is not None else [],
            "similar": redundancy.most_similar(c, 5) if redundancy is not None else [],
            "prev": (c - 1) % count,
            "next": (c + 1) % count,
        }
        rows.append(row)
        write_page(
            folder / f"c{c}.html",
            "atlas_channel.html",
            root="../",
            version=convsight.__version__,
            model=model.card.name,
            layer=name,
            channel=row,
            presets=presets,
            dataset_size=dataset_size,
        )
    pairs = []
    if redundancy is not None:
        sim = torch.triu(redundancy.similarity, 1)
        top = sim.flatten().topk(min(10, count * (count - 1) // 2))
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            a, b = divmod(flat, count)
            pairs.append((a, b, value, redundancy.transform[a][b]))
    layer = {
        "name": name,
        "dir": name,
        "type": type(module).__name__,
        "channels": list(range(count)),
        "dead": [r["index"] for r in rows if r["dead"]],
        "channel_rows": rows,
        "redundancy": redundancy.curve() if redundancy is not None else None,
        "remaining_090": redundancy.remaining(0.9) if redundancy is not None else None,
        "colour": redundancy is not None and module.in_channels == 3,
        "pairs": pairs,
    }
    write_page(
        folder / "index.html",
        "atlas_layer.html",
        root="../",
        version=convsight.__version__,
        model=model.card.name,
        layer=layer,
        main_preset=presets[-1],
    )
    return layer
