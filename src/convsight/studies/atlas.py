"""An atlas of a model's channels: a static site, resumable, every file written whole.

Layout of ``out``: ``index.html``; per layer ``<layer>/index.html`` (all channels, dead ones
marked, filter redundancy) and ``<layer>/c<k>.html`` (visualizations, top dataset examples
with their receptive-field patch, activation histogram, most similar filters). A channel is
done when ``<layer>/records/c<k>.json`` exists; a restarted run skips done channels.

``<layer>`` is the layer name made safe as a folder name (distinct per layer). The settings
are recorded in ``atlas-run.json``: a rerun continues only with the same settings (more
layers may be added), and refuses anything else in one sentence. While it runs, an atlas
holds a lock on ``.convsight-atlas.lock``; it deletes only its own temporary files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

import convsight
from convsight.analysis.dataset_examples import receptive_field, top_examples
from convsight.analysis.filters import filter_redundancy
from convsight.data.folder import IMAGE_SUFFIXES
from convsight.data.images import load_readable_images
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to, get_layer
from convsight.models import Model, load_model
from convsight.optvis.render import parse_channels, render_channels, settings_for
from convsight.paths import require_folder
from convsight.progress import progress_bar
from convsight.report import (
    prepare_out_dir,
    remove_own_temporaries,
    safe_filename,
    unique_names,
    write_figure,
    write_json,
    write_npz,
    write_text,
)
from convsight.report.files import json_data
from convsight.report.html import environment, write_page
from convsight.report.images import examples_strip, write_image, write_pil
from convsight.runtime import seed_everything

RUN_FILE = "atlas-run.json"  # the settings the atlas in a folder was started with
LOCK_FILE = ".convsight-atlas.lock"  # held (flock) while an atlas writes into the folder
# Names at the top of the atlas folder that a layer folder must not take.
RESERVED_NAMES = ("index.html", "style.css", "atlas.json", RUN_FILE, LOCK_FILE)


def dataset_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (flat or one level of class folders), sorted."""
    folder = require_folder(folder, "dataset folder")
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
    pixels, kept, skipped = load_readable_images(files, model.card, "image of the dataset")
    return pixels, [str(path.relative_to(root)) for path in kept], skipped


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


def _distinct(values: Sequence[str]) -> list[str]:
    """Stripped, blank ones dropped, each once, in the order given."""
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, NaN None)."""
    return json.loads(json.dumps(json_data(value), allow_nan=False))


def parameters_sha256(module: nn.Module) -> str:
    """A fingerprint of a module's weights and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _dataset_sha256(names: Sequence[str], pixels: torch.Tensor | None) -> str | None:
    if pixels is None:
        return None
    digest = hashlib.sha256("\n".join(names).encode())
    digest.update(pixels.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_render_size(model: Model, layers: Sequence[str], sizes: set[int | None]) -> None:
    """Every layer must give a channel map at every render size (one small forward each)."""
    for size in sorted(s for s in sizes if s is not None and (s, s) != model.card.input_size):
        x = torch.zeros(1, model.card.channels, size, size, device=model.device)
        try:
            with torch.no_grad():
                outputs = forward_to(model.module, x, list(layers))
        except ConvsightError:
            raise
        except Exception as exc:  # the module says why in its own words
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ConvsightError(
                f"model '{model.card.name}' does not run on {size}x{size} images up to the "
                f"atlas layers ({reason}); give another --size"
            ) from exc
        for name, value in outputs.items():
            if value.dim() != 4 or min(value.shape[-2:]) < 1:
                raise ConvsightError(f"layer '{name}' has no channel map at --size {size}")


def _run_record(
    spec: str | None,
    model: Model,
    weights: str | os.PathLike | None,
    layers: list[str],
    presets: list[str],
    settings: dict[str, Any],
    steps: int | None,
    size: int | None,
    seed: int,
    top_k: int,
    dataset: str | os.PathLike | None,
    dataset_sha256: str | None,
    dataset_size: int,
    batch: int,
    channels: str | None,
) -> dict[str, Any]:
    """What ``atlas-run.json`` holds: every setting that shapes the atlas's files."""
    card = model.card
    return _plain(
        {
            "convsight": convsight.__version__,
            "model": {
                "name": card.name,
                "input_size": card.input_size,
                "channels": card.channels,
                "mean": card.mean,
                "std": card.std,
                "parameters_sha256": parameters_sha256(model.module),
            },
            "model_spec": spec,
            "weights": str(Path(weights).resolve()) if weights else None,
            "layers": layers,
            "presets": presets,
            "render_settings": {p: s.to_dict() for p, s in settings.items()},
            "steps": steps,
            "size": size,
            "seed": seed,
            "top_k": top_k,
            "dataset": (
                {
                    "path": str(Path(dataset).resolve()),
                    "images": dataset_size,
                    "sha256": dataset_sha256,
                }
                if dataset is not None
                else None
            ),
            "batch": batch,
            "channels": channels,
        }
    )


def _short_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict) and "path" in value:
        return str(value["path"])
    return str(value)


def _differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the run that started an atlas and this one (layers may grow)."""
    found = []
    if earlier.get("model") != now["model"]:
        was, new = earlier.get("model") or {}, now["model"]
        what = "name" if was.get("name") != new["name"] else "weights or input card"
        found.append(f"the model ({what}: {was.get('name')} there, {new['name']} here)")
    missing = [n for n in earlier.get("layers", []) if n not in now["layers"]]
    if missing:
        found.append(f"layers ({_short_value(missing)} there, not here; adding layers is fine)")
    if earlier.get("presets") != now["presets"]:
        found.append(
            f"presets ({_short_value(earlier.get('presets'))} there, "
            f"{_short_value(now['presets'])} here)"
        )
    else:
        for preset, settings in now["render_settings"].items():
            was = (earlier.get("render_settings") or {}).get(preset, {})
            keys = [k for k in settings if was.get(k) != settings[k]]
            if keys:
                changes = ", ".join(f"{k} {was.get(k)} there, {settings[k]} here" for k in keys)
                found.append(f"render settings of preset {preset} ({changes})")
    for key in ("seed", "top_k"):
        if earlier.get(key) != now[key]:
            found.append(f"{key} ({earlier.get(key)} there, {now[key]} here)")
    if earlier.get("channels") != now["channels"]:
        was, new = earlier.get("channels") or "all", now["channels"] or "all"
        found.append(f"channels ({was} there, {new} here)")
    was_data, data = earlier.get("dataset"), now["dataset"]
    if (was_data or {}).get("sha256") != (data or {}).get("sha256"):
        if was_data and data and was_data.get("path") == data["path"]:
            found.append(f"the contents of the dataset {data['path']}")
        else:
            found.append(f"dataset ({_short_value(was_data)} there, {_short_value(data)} here)")
    return found


def check_resume(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The settings to run with in ``out``: ``run`` for a new atlas; for an atlas started
    before, the same settings with its layers first (more layers may be added). Any other
    difference is refused with one sentence, before anything is written."""
    record = out / RUN_FILE
    if not record.exists():
        old_atlas = (out / "atlas.json").exists() or (
            out.is_dir() and any((d / "records").is_dir() for d in out.iterdir() if d.is_dir())
        )
        if old_atlas:
            raise ConvsightError(
                f"{out} holds an atlas without a record of its settings ({RUN_FILE}), so it "
                "cannot be continued safely; use another --out or delete the folder to start "
                "fresh"
            )
        return run
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
        if not isinstance(earlier, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise ConvsightError(
            f"cannot read {record} ({exc}); use another --out or delete the folder to start fresh"
        ) from exc
    found = _differences(earlier, run)
    if found:
        raise ConvsightError(
            f"the atlas in {out} was started with other settings ({'; '.join(found)}): rerun "
            "with the same settings to continue it, or use another --out (or delete the "
            "folder) to start fresh"
        )
    layers = list(dict.fromkeys([*earlier["layers"], *run["layers"]]))
    return {**run, "layers": layers}


@contextmanager
def atlas_lock(out: Path) -> Iterator[None]:
    """Hold the atlas lock of ``out``; a second atlas writing into it fails in one sentence."""
    try:
        import fcntl
    except ImportError:  # no flock on this system (Windows): no lock
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConvsightError(f"another convsight atlas is writing into {out}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def chosen_channels(
    channels: str | Sequence[int] | None, counts: dict[str, int]
) -> tuple[str | None, dict[str, list[int]]]:
    """The channels to render of each layer (every one when ``channels`` is None) and the
    selection as recorded (``"0-7,9"``); a channel a layer lacks fails in one sentence."""
    if channels is None:
        return None, {name: list(range(count)) for name, count in counts.items()}
    text = channels if isinstance(channels, str) else ",".join(str(int(c)) for c in channels)
    chosen = {}
    for name, count in counts.items():
        try:
            chosen[name] = sorted(parse_channels(text, limit=count))
        except ConvsightError as exc:
            raise ConvsightError(f"{exc} (--channels, layer '{name}')") from None
    first = next(iter(chosen.values()))
    runs: list[list[int]] = []
    for c in first:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs), chosen


def build_atlas(
    model: str | Model,
    layers: Sequence[str],
    out: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    channels: str | Sequence[int] | None = None,
    dataset: str | os.PathLike | None = None,
    top_k: int = 9,
    presets: Sequence[str] = ("paper", "robust"),
    steps: int | None = None,
    size: int | None = None,
    batch: int = 16,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Render every channel of ``layers`` (each preset), find dataset examples, write the site.

    ``channels`` (``"0-7"``, or a list) renders only those channels of every layer (each
    layer must have them); None renders all. Every input is checked before ``out`` is
    created. The settings are recorded in ``out/atlas-run.json``; a rerun into the same
    folder continues only with the same model, presets, render settings, channels, seed,
    top-k and dataset (it may add layers; ``batch`` is free), anything else is refused. One
    atlas at a time writes into a folder (a lock file).
    """
    layers = _distinct(layers)
    if not layers:
        raise ConvsightError("give at least one layer (--layers)")
    presets = _distinct(presets)
    if not presets:
        raise ConvsightError("give at least one preset (--presets paper,robust)")
    if top_k < 1 or batch < 1:
        raise ConvsightError("--top-k and --batch must be at least 1")
    settings = {p: settings_for(p, steps=steps, size=size) for p in presets}
    seed_everything(seed)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    check_layers(loaded.module, layers)
    with torch.no_grad():
        outputs = forward_to(loaded.module, loaded.example_input(), list(layers))
    for name, value in outputs.items():
        if value.dim() != 4:
            raise ConvsightError(f"layer '{name}' outputs {tuple(value.shape[1:])}, not channels")
    selection, chosen = chosen_channels(
        channels, {name: int(value.shape[1]) for name, value in outputs.items()}
    )
    _check_render_size(loaded, layers, {s.size for s in settings.values()})
    files = dataset_images(dataset) if dataset is not None else []
    pixels, names, skipped = load_dataset(loaded, files, Path(dataset)) if files else (None, [], [])
    run = _run_record(
        model if isinstance(model, str) else None,
        loaded,
        weights,
        layers,
        presets,
        settings,
        steps,
        size,
        seed,
        top_k,
        dataset,
        _dataset_sha256(names, pixels),
        len(names),
        batch,
        selection,
    )
    out = Path(out)
    check_resume(out, run)  # refuse before creating or touching anything
    out = prepare_out_dir(out)
    with atlas_lock(out):
        run = check_resume(out, run)  # again, now that no other atlas can write here
        layers = run["layers"]  # the earlier run's layers first (each one is named again)
        dirs = dict(zip(layers, unique_names(layers, taken=RESERVED_NAMES), strict=True))
        run["layer_folders"] = dirs
        write_json(out / RUN_FILE, run)
        for folder in (
            out,
            *(out / d / sub for d in dirs.values() for sub in ("", "records", "img")),
        ):
            remove_own_temporaries(folder)
        write_text(out / "style.css", environment().get_template("style.css").render())
        return _build(
            loaded,
            layers,
            dirs,
            out,
            chosen,
            settings,
            presets,
            pixels,
            names,
            skipped,
            weights,
            dataset,
            top_k,
            batch,
            seed,
            show_progress,
        )


def _build(
    loaded: Model,
    layers: list[str],
    dirs: dict[str, str],
    out: Path,
    chosen: dict[str, list[int]],
    settings: dict[str, Any],
    presets: list[str],
    pixels: torch.Tensor | None,
    names: list[str],
    skipped: list,
    weights: str | os.PathLike | None,
    dataset: str | os.PathLike | None,
    top_k: int,
    batch: int,
    seed: int,
    show_progress: bool,
) -> dict[str, Any]:
    """Render what is not done yet and write every page (inputs checked, lock held)."""
    start = time.perf_counter()
    rendered = 0
    total = sum(len(chosen[name]) for name in layers)
    layer_rows = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task("atlas", total=total, status="")
        for name in layers:
            count = len(chosen[name])
            folder = out / dirs[name]
            records = folder / "records"
            examples = (
                _examples(loaded, name, pixels, top_k, folder, out) if pixels is not None else None
            )
            field = receptive_field(loaded, name) if pixels is not None else None
            todo = [c for c in chosen[name] if not (records / f"c{c}.json").exists()]
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
                        image = folder / "img" / f"c{channel}_{safe_filename(p)}.png"
                        write_image(image, result.images[row], 112, within=out)
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
                            folder, channel, examples, field, pixels, names, out
                        )
                    write_json(records / f"c{channel}.json", record, within=out)
                    rendered += 1
                    bar.update(task, advance=1)
            layer_rows.append(
                _layer_pages(loaded, name, dirs[name], chosen[name], out, presets, len(names))
            )
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
        within=out,
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


def _examples(
    model: Model, layer: str, pixels: torch.Tensor, top_k: int, folder: Path, out: Path
) -> dict[str, torch.Tensor]:
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
    write_npz(cache, within=out, **data)
    return data


def _write_examples(folder, channel, examples, field, pixels, names, out) -> list[dict[str, Any]]:
    chosen = examples["top_images"][channel].tolist()
    positions = examples["top_positions"][channel].tolist()
    boxes = [field.box(y, x) for y, x in positions]
    strip = examples_strip([pixels[i] for i in chosen], boxes)
    write_pil(folder / "img" / f"c{channel}_examples.png", strip, within=out)
    values = examples["top_values"][channel].tolist()
    return [
        {"name": names[i], "value": v, "box": b}
        for i, v, b in zip(chosen, values, boxes, strict=True)
    ]


def _layer_pages(
    model: Model,
    name: str,
    folder_name: str,
    channels: list[int],
    out: Path,
    presets: list[str],
    dataset_size: int,
) -> dict[str, Any]:
    """The layer's page and a page per rendered channel (links only among ``channels``)."""
    folder = out / folder_name
    module = get_layer(model.module, name)
    redundancy = filter_redundancy(model.module, name) if isinstance(module, nn.Conv2d) else None
    if redundancy is not None and not (folder / "redundancy.png").exists():
        figure = _redundancy_figure(redundancy.curve(), len(redundancy.similarity), name)
        write_figure(folder / "redundancy.png", figure, within=out)
    histograms = None
    if (folder / "examples.npz").exists():
        histograms = _load_npz(folder / "examples.npz")["max_per_image"]
    shown = set(channels)
    rows = []
    for i, c in enumerate(channels):
        record = json.loads((folder / "records" / f"c{c}.json").read_text())
        similar = []
        if redundancy is not None:
            ranked = redundancy.most_similar(c, len(redundancy.similarity) - 1)
            similar = [s for s in ranked if s[0] in shown][:5]
        row = {
            "index": c,
            "dead": record["dead"],
            "objective": record["values"],
            "examples": record.get("examples", []),
            "histogram": histograms[c].tolist() if histograms is not None else [],
            "similar": similar,
            "prev": channels[i - 1],
            "next": channels[(i + 1) % len(channels)],
        }
        rows.append(row)
        write_page(
            folder / f"c{c}.html",
            "atlas_channel.html",
            within=out,
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
        index = torch.tensor(channels)
        sim = torch.triu(redundancy.similarity[index][:, index], 1)
        n = len(channels)
        top = sim.flatten().topk(min(10, n * (n - 1) // 2))
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            a, b = (channels[i] for i in divmod(flat, n))
            pairs.append((a, b, value, redundancy.transform[a][b]))
    layer = {
        "name": name,
        "dir": folder_name,
        "type": type(module).__name__,
        "channels": list(channels),
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
        within=out,
        root="../",
        version=convsight.__version__,
        model=model.card.name,
        layer=layer,
        main_preset=presets[-1],
    )
    return layer
