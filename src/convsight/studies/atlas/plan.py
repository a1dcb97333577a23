"""The plan of an atlas, printed before the work: channels per layer, seconds per channel
measured by a short probe on the workers, and the estimated total for the workers present;
and what the run actually spent, next to the estimate."""

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


def layer_actual(name: str, rendered: int, render_seconds: float, wall: float) -> dict[str, Any]:
    """What rendering layer ``name`` cost this run: ``rendered`` channels, the renders'
    seconds as the workers measured them (the quantity the probe estimates), their seconds a
    channel (None: none rendered) and the ``wall`` seconds this process waited for them."""
    return {
        "layer": name,
        "rendered": rendered,
        "render_seconds": render_seconds,
        "seconds_per_channel": render_seconds / rendered if rendered else None,
        "wall_seconds": wall,
    }


def actual(layers: list[dict[str, Any]], plan: dict[str, Any] | None) -> dict[str, Any]:
    """The run's actual cost (rows of :func:`layer_actual`) beside the ``plan``'s estimate
    when one was made: per layer the estimated seconds a channel and the ratio actual /
    estimate; in all, the render seconds on one worker, the wall seconds of the renders and
    the ratio of the render seconds to the plan's (None where there is nothing to compare)."""
    estimates = {r["layer"]: r["seconds_per_channel"] for r in (plan or {}).get("layers", [])}
    rows = []
    for row in layers:
        estimate, spent = estimates.get(row["layer"]), row["seconds_per_channel"]
        ratio = spent / estimate if estimate and spent is not None else None
        rows.append({**row, "estimated_seconds_per_channel": estimate, "ratio": ratio})
    total = sum(r["render_seconds"] for r in rows)
    planned = plan["render_seconds_one_worker"] if plan else None
    return {
        "layers": rows,
        "rendered": sum(r["rendered"] for r in rows),
        "render_seconds_one_worker": total,
        "wall_seconds": sum(r["wall_seconds"] for r in rows),
        "estimated_render_seconds_one_worker": planned,
        "ratio": total / planned if planned else None,
    }
