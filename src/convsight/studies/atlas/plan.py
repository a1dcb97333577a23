"""The plan of an atlas, printed before the work: channels per layer, seconds per channel
measured by a short probe on the workers, and the estimated total for the workers present."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.table import Table

from convsight.distributed import Work
from convsight.errors import ConvsightError
from convsight.optvis.settings import RenderSettings
from convsight.progress import console
from convsight.studies.atlas.inputs import AtlasJob
from convsight.studies.atlas.tasks import render_chunk

PROBE_STEPS = 2  # steps of the probe render of each preset
MAX_PLAN_HOURS = 24.0  # a plan estimated longer than this starts only with --yes


def probe(job: AtlasJob, todo: dict[str, list[int]], work: Work) -> dict[str, Any]:
    """Render one chunk (up to ``job.batch`` channels) of every layer with work left for
    :data:`PROBE_STEPS` steps per preset, as units of ``work``; scale to the full steps. The
    estimate counts renders only (not the dataset pass, invariances or pages)."""
    layers = [name for name in job.layers if todo[name]]
    probe_settings = {p: _short(s) for p, s in job.settings.items()}
    shared = {"model": job.model, "settings": probe_settings, "seed": job.seed}
    items = [{"layer": name, "channels": todo[name][: job.batch]} for name in layers]
    rows = []
    for index, chunk in work.map(render_chunk, shared, items):
        name = layers[index]
        per_channel = sum(
            chunk.renders[p].seconds * s.steps / PROBE_STEPS for p, s in job.settings.items()
        ) / len(chunk.channels)
        rows.append(
            {
                "layer": name,
                "channels": len(job.chosen[name]),
                "to_render": len(todo[name]),
                "seconds_per_channel": per_channel,
            }
        )
    rows.sort(key=lambda row: job.layers.index(row["layer"]))
    workers = max(work.workers, 1)
    total = sum(r["to_render"] * r["seconds_per_channel"] for r in rows)
    return {
        "layers": rows,
        "workers": workers,
        "probe_steps": PROBE_STEPS,
        "render_seconds_one_worker": total,
        "estimated_seconds": total / workers,
    }


def check_plan(plan: dict[str, Any], yes: bool) -> None:
    """A plan estimated over :data:`MAX_PLAN_HOURS` of rendering needs ``yes`` (``--yes``);
    one sentence naming the estimate otherwise."""
    hours = plan["estimated_seconds"] / 3600
    if hours > MAX_PLAN_HOURS and not yes:
        raise ConvsightError(
            f"the atlas plan estimates {hours:,.0f} h of rendering on {plan['workers']} "
            f"worker(s), more than the {MAX_PLAN_HOURS:.0f} h convsight starts without --yes; "
            "pass --yes to start it anyway, or lower --steps, --size, --layers or --channels"
        )


def _short(settings: RenderSettings) -> RenderSettings:
    """``settings`` with the probe's steps."""
    return dataclasses.replace(settings, steps=PROBE_STEPS)


def print_plan(plan: dict[str, Any]) -> None:
    """The plan as a table on the console (stderr)."""
    table = Table(title="atlas plan", title_justify="left")
    for column in ("layer", "channels", "to render", "s / channel"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for row in plan["layers"]:
        table.add_row(
            row["layer"],
            str(row["channels"]),
            str(row["to_render"]),
            f"{row['seconds_per_channel']:.2f}",
        )
    console.print(table)
    hours = plan["estimated_seconds"] / 3600
    console.print(
        f"estimated {hours:.2f} h of rendering on {plan['workers']} worker(s) "
        f"(probe: {plan['probe_steps']} steps a preset; dataset pass and pages not counted)"
    )
