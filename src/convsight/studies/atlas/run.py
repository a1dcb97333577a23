"""The record of an atlas run (``atlas-run.json``), resuming only with the same settings, and
the lock one atlas holds on its folder."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

import convsight
from convsight.errors import ConvsightError
from convsight.report.files import json_data
from convsight.studies.atlas.inputs import AtlasJob

RUN_FILE = "atlas-run.json"  # the settings the atlas in a folder was started with
LOCK_FILE = ".convsight-atlas.lock"  # held (flock) while an atlas writes into the folder
# Names at the top of the atlas folder that a layer folder must not take.
COMPRESSION_DIR = "compression"  # convsight compress's files, when asked for
RESERVED_NAMES = ("index.html", "style.css", "atlas.json", RUN_FILE, LOCK_FILE, COMPRESSION_DIR)


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


def run_record(job: AtlasJob) -> dict[str, Any]:
    """What ``atlas-run.json`` holds: every setting that shapes the atlas's files."""
    card = job.model.card
    data = job.dataset
    return _plain(
        {
            "convsight": convsight.__version__,
            "model": {
                "name": card.name,
                "input_size": card.input_size,
                "channels": card.channels,
                "mean": card.mean,
                "std": card.std,
                "parameters_sha256": parameters_sha256(job.model.module),
            },
            "model_spec": job.spec,
            "weights": str(Path(job.weights).resolve()) if job.weights else None,
            "layers": job.layers,
            "presets": job.presets,
            "render_settings": {p: s.to_dict() for p, s in job.settings.items()},
            "steps": job.steps,
            "size": job.size,
            "seed": job.seed,
            "top_k": job.top_k,
            "dataset": (
                {
                    "path": str(Path(data.path).resolve()),
                    "images": len(data.names),
                    "sha256": data.sha256(),
                }
                if data is not None
                else None
            ),
            "batch": job.batch,
            "cheap": {"on": job.cheap, "not_applied": job.cheap_note} if job.cheap else None,
            "channels": job.selection,
            "invariances_softplus": job.invariances or None,  # None: no invariances
            "compression": (
                {
                    "data": str(job.compression.data.resolve()),
                    "finetune_images": job.compression.finetune_images,
                    "test_images": job.compression.test_images,
                }
                if job.compression is not None
                else None
            ),
        }
    )


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, NaN None)."""
    return json.loads(json.dumps(json_data(value), allow_nan=False))


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
    for key in ("seed", "top_k", "invariances_softplus", "compression"):
        if earlier.get(key) != now.get(key):
            found.append(f"{key} ({earlier.get(key)} there, {now.get(key)} here)")
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


def _short_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict) and "path" in value:
        return str(value["path"])
    return str(value)


@contextmanager
def atlas_lock(out: Path) -> Iterator[None]:
    """Hold the atlas lock of ``out``; a second atlas writing into it fails in one sentence."""
    try:
        import fcntl
    except ImportError:  # no flock on this system (Windows): no lock
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(out / LOCK_FILE, flags, 0o666)  # a link in its place is not followed
    except OSError as exc:
        raise ConvsightError(
            f"cannot take the atlas lock {out / LOCK_FILE} ({exc.strerror}); if it is a link, "
            "remove it"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConvsightError(f"another convsight atlas is writing into {out}") from None
        yield
    finally:
        os.close(fd)  # releases the lock
