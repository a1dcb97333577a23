"""``build_atlas``: check the inputs, take the folder (resuming an earlier run), render what
is not done yet and write every page."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convsight.distributed import LocalWork, Work, check_ray, connect
from convsight.models import Model
from convsight.optvis.budget import check_steps
from convsight.progress import progress_bar
from convsight.report import (
    prepare_out_dir,
    remove_own_temporaries,
    unique_names,
    write_json,
    write_text,
)
from convsight.report.html import environment
from convsight.studies.atlas.inputs import AtlasJob, check_inputs
from convsight.studies.atlas.pages import layer_pages, write_index
from convsight.studies.atlas.plan import actual, check_plan, layer_actual, print_plan, probe
from convsight.studies.atlas.rendering import find_examples, render_layer, todo_channels
from convsight.studies.atlas.request import AtlasRequest, AtlasResult
from convsight.studies.atlas.run import (
    COMPRESSION_DIR,
    RESERVED_NAMES,
    RUN_FILE,
    atlas_lock,
    check_resume,
    run_record,
)


def build_atlas(model: Model, request: AtlasRequest) -> AtlasResult:
    """Render every channel of the request's layers (each preset), find dataset examples,
    write the site into ``request.out`` (see :class:`AtlasRequest`).

    Every input is checked before the folder is created. The settings are recorded in
    ``out/atlas-run.json``; a rerun into the same folder continues only with the same model,
    presets, render settings, channels, seed, top-k and dataset (it may add layers; ``batch``
    is free), anything else is refused. One atlas at a time writes into a folder (a lock
    file). ``invariances`` (a softplus beta above 0) adds each channel's first invariance
    around its optimum, as a GIF.

    ``ray`` renders chunks of channels and slices of the dataset as Ray tasks, with the same
    files as a local run; this process alone writes them. The plan prints channels per layer,
    seconds per channel from a short probe and the estimated total for the workers present,
    before the work; ``atlas.json`` records it with what the run actually spent (``actual``).
    ``compression`` runs the compression trials on the model into
    ``out/compression/``; the index and each conv layer's page show the results.

    The heaviest render must fit in the memory available; more than ``MAX_STEPS`` steps or a
    plan over ``MAX_PLAN_HOURS`` need ``yes`` (:mod:`convsight.optvis.budget`, ``plan``).
    """
    check_steps(request.steps or 0, request.yes)
    if request.ray is not None:
        check_ray(request.ray)  # Ray installed, the address answers: before any work
    job = check_inputs(model, request)
    return _start(job, request)


def _start(job: AtlasJob, request: AtlasRequest) -> AtlasResult:
    """Check the folder (before creating or touching anything), connect the work, make the
    plan when asked for, then take the folder and build the atlas in it."""
    out, show_progress = Path(request.out), request.show_progress
    run = run_record(job)
    resumed = check_resume(out, run)
    work = connect(request.ray) if request.ray is not None else LocalWork()
    try:
        planned = None
        if request.planned:
            planned = _plan(job, resumed["layers"], out, work, show_progress, request.yes)
        return _run(job, run, out, work, show_progress, planned)
    finally:
        work.close()


def _plan(
    job: AtlasJob, layers: list[str], out: Path, work: Work, show_progress: bool, yes: bool
) -> dict[str, Any]:
    """The plan of the channels of ``layers`` (the earlier run's first) not yet recorded in
    ``out``, probed before the folder is taken: a plan over the hours allowed needs ``yes``."""
    job.layers = layers
    dirs = _layer_folders(layers)
    planned = probe(job, {n: todo_channels(job, n, out / dirs[n]) for n in layers}, work)
    check_plan(planned, yes)
    if show_progress:
        print_plan(planned)
    return planned


def _layer_folders(layers: Sequence[str]) -> dict[str, str]:
    """Each layer's folder name in the atlas (distinct, none a reserved name)."""
    return dict(zip(layers, unique_names(layers, taken=RESERVED_NAMES), strict=True))


def _run(
    job: AtlasJob,
    run: dict[str, Any],
    out: Path,
    work: Work,
    show_progress: bool,
    planned: dict[str, Any] | None,
) -> AtlasResult:
    """Take the folder (inputs checked, work connected) and build the atlas in it."""
    out = prepare_out_dir(out)
    with atlas_lock(out):
        run = check_resume(out, run)  # again, now that no other atlas can write here
        job.layers = run["layers"]  # the earlier run's layers first (each one is named again)
        dirs = _layer_folders(job.layers)
        run["layer_folders"] = dirs
        write_json(out / RUN_FILE, run)
        for folder in (
            out,
            out / COMPRESSION_DIR,
            *(out / d / sub for d in dirs.values() for sub in ("", "records", "img")),
        ):
            remove_own_temporaries(folder)
        write_text(out / "style.css", environment().get_template("style.css").render())
        return _build(job, dirs, out, work, show_progress, planned)


def _build(
    job: AtlasJob,
    dirs: dict[str, str],
    out: Path,
    work: Work,
    show_progress: bool,
    planned: dict[str, Any] | None,
) -> AtlasResult:
    """Render what is not done yet and write every page (inputs checked, lock held)."""
    start = time.perf_counter()
    rendered = 0
    total = sum(len(job.chosen[name]) for name in job.layers)
    layer_rows, spent = [], []
    compressed = _compression(job, out, show_progress)  # its own progress bar, first
    with progress_bar(show_progress) as bar:
        task = bar.add_task("atlas", total=total, status="dataset")
        find_examples(job, {name: out / dirs[name] for name in job.layers}, out, work)
        for name in job.layers:
            began = time.perf_counter()
            count, seconds = render_layer(job, name, out / dirs[name], out, work, bar, task)
            spent.append(layer_actual(name, count, seconds, time.perf_counter() - began))
            row = layer_pages(job, name, dirs[name], out, compressed)
            row["rendered_this_run"] = count
            row["seconds_this_run"] = time.perf_counter() - began
            layer_rows.append(row)
            rendered += count
    render_seconds = time.perf_counter() - start
    dataset = str(job.dataset.path) if job.dataset is not None else None
    result = AtlasResult(
        model=job.model.card.name,
        weights=str(job.weights) if job.weights else None,
        layers=[{k: v for k, v in r.items() if k != "channel_rows"} for r in layer_rows],
        presets=job.presets,
        render_settings={p: s.to_dict() for p, s in job.settings.items()},
        dataset=dataset,
        dataset_size=len(job.names),
        skipped_images=job.dataset.skipped if job.dataset is not None else [],
        top_k=job.top_k,
        seed=job.seed,
        channels=total,
        rendered_this_run=rendered,
        seconds_this_run=render_seconds,
        seconds_per_channel=render_seconds / rendered if rendered else None,
        work=work.describe(),
        plan=planned,
        actual=actual(spent, planned),
        compression=f"{COMPRESSION_DIR}/compression.json" if compressed else None,
    )
    write_index(job, out, layer_rows, dataset, compressed)
    result.files = [write_json(out / "atlas.json", result.to_json()), out / "index.html"]
    return result


def _compression(job: AtlasJob, out: Path, show_progress: bool) -> dict[str, Any] | None:
    """The compression trials' result: run once into ``out/compression`` (an earlier run's
    is read back)."""
    if job.compression is None:
        return None
    folder = out / COMPRESSION_DIR
    done = folder / "compression.json"
    if done.exists() and (folder / "compression.png").exists():
        return json.loads(done.read_text(encoding="utf-8"))
    from convsight.studies.compression import CompressionRequest, compress

    c = job.compression
    request = CompressionRequest(
        c.data, folder, finetune_images=c.finetune_images, test_images=c.test_images,
        seed=job.seed, show_progress=show_progress,
    )  # fmt: skip
    return compress(job.model, request).to_json()
