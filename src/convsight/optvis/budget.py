"""What a render needs in memory, checked before any large allocation.

:func:`render_cost` measures, with one forward pass at the model's own input size, how many
bytes per input pixel the render's forward (truncated at the objective's layers, sliced to
each row's channel where the render slices) keeps for its backward pass; :meth:`RenderCost.peak`
scales that to the request (rows per pass, views, image side) and adds what does not depend
on the model (the parameterization and its optimizer state, the transformed views, the
objective trace of every step). :func:`check_render` refuses, in one sentence naming the
largest value that fits, an image side above :data:`MAX_SIDE` or a request whose peak is
over the memory available; :func:`check_steps` asks for ``--yes`` above :data:`MAX_STEPS`.

The constants below were set against measured peaks (resident memory of a render in a fresh
process, CPU): 0.9-1.5x the estimate for the MNIST CNN and VGG16, 224-1024 px, 1-16 views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from convsight.budget import (
    BACKWARD,
    USABLE,
    available_memory,
    describe_available,
    largest_fitting,
    readable_bytes,
    saved_bytes,
)
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis.forward import Forward, auto_chunk
from convsight.optvis.objectives import Objective
from convsight.optvis.recipes import penalties
from convsight.optvis.settings import RenderSettings

MAX_SIDE = 4096  # the largest image side a render takes (as a model card's input side)
MAX_STEPS = 100_000  # more steps than this run only with --yes (the presets take 20 and 256)
VIEW_IMAGES = 12.0  # float images per transformed view (padded, resampled, its grid, grads)
ROW_IMAGES = 8.0  # float images per row: parameter, gradient, Adam's two moments, pixels...
PASS_IMAGES = 6.0  # float images per row of a pass: the parameterization's pixels and grads
_KNOBS = ("size", "views", "steps", "rows")
_HIGHEST = {"views": 1 << 20, "steps": 1 << 40, "rows": 1 << 20}


@dataclass(frozen=True)
class RenderCost:
    """A render's memory, per input pixel of the model, scaled to a request by :meth:`peak`."""

    pixel_bytes: float  # kept for the backward pass, per input pixel of one view
    channels: int  # image channels
    pad: int  # the transforms' padding
    coupled: bool  # all rows in one pass
    chunk: int  # rows per pass (0: automatic)
    device: torch.device

    def peak(self, rows: int, side: tuple[int, int], views: int, steps: int) -> int:
        """Bytes at the peak of a render of ``rows`` images of ``side`` with ``views``
        transformed views a step for ``steps`` steps."""
        h, w = side
        per_pass = rows if self.coupled else self.chunk or auto_chunk(self.device, rows, side)
        per_pass = min(per_pass, rows)
        image = 4.0 * self.channels * h * w
        padded = 4.0 * self.channels * (h + 2 * self.pad) * (w + 2 * self.pad)
        view = BACKWARD * self.pixel_bytes * h * w + VIEW_IMAGES * padded
        passes = per_pass * (views * view + PASS_IMAGES * image)
        return int(rows * ROW_IMAGES * image + 4.0 * steps * rows + passes)


def render_cost(model: Model, objective: Objective, settings: RenderSettings) -> RenderCost:
    """The :class:`RenderCost` of rendering ``objective`` (its penalties added) with
    ``settings``: one forward pass of one image at the model's input size, as the render
    runs it."""
    extra = penalties(settings)
    objective = objective if extra is None else objective - extra
    h, w = model.card.input_size
    forward = Forward(model, objective, settings.slice_channels)
    x = torch.zeros(1, model.card.channels, h, w, device=model.device, requires_grad=True)
    fixed = [*model.module.parameters(), *model.module.buffers()]
    kept = saved_bytes(lambda: forward(x, torch.arange(1)), exclude=fixed)
    return RenderCost(
        pixel_bytes=kept / (h * w),
        channels=model.card.channels,
        pad=settings.pad,
        coupled=objective.coupled,
        chunk=settings.chunk,
        device=model.device,
    )


@dataclass(frozen=True)
class RenderRequest:
    """The knobs of a render that set its memory; ``given``: the ones the user chose (named
    first when one must come down)."""

    rows: int
    side: tuple[int, int]
    views: int
    steps: int
    given: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, model: Model, settings: RenderSettings, rows: int, given: Collection[str] = ()
    ) -> RenderRequest:
        side = (settings.size, settings.size) if settings.size else model.card.input_size
        knobs = tuple(k for k in _KNOBS if k in given or (k == "rows" and "batch" in given))
        return cls(rows, (side[0], side[1]), settings.views, settings.steps, knobs)

    def value(self, knob: str) -> int:
        return self.side[0] if knob == "size" else getattr(self, knob)

    def with_value(self, knob: str, n: int) -> RenderRequest:
        if knob == "size":
            return dataclasses.replace(self, side=(n, n))
        changes: dict[str, Any] = {knob: n}  # rows, views or steps
        return dataclasses.replace(self, **changes)

    def peak(self, cost: RenderCost) -> int:
        return cost.peak(self.rows, self.side, self.views, self.steps)


def _flag(knob: str, rows_name: str) -> str:
    return rows_name if knob == "rows" else f"--{knob}"


def _largest(request: RenderRequest, cost: RenderCost, knob: str, budget: int | None) -> int | None:
    """The largest value of ``knob`` (the others as requested) whose peak is within
    ``budget`` bytes (``budget`` None: no memory bound, only :data:`MAX_SIDE`)."""
    high = MAX_SIDE if knob == "size" else _HIGHEST[knob]
    low = 8 if knob == "size" else 1
    if budget is None:
        return high
    return largest_fitting(lambda n: request.with_value(knob, n).peak(cost) <= budget, low, high)


def check_render(
    model: Model,
    objective: Objective,
    settings: RenderSettings,
    rows: int,
    what: str,
    given: Collection[str] = (),
    rows_name: str = "number of rows",
    noun: str = "rows",
    cost: RenderCost | None = None,
) -> None:
    """Refuse in one sentence a render of ``rows`` rows of ``objective`` (``what`` names it)
    whose image side is above :data:`MAX_SIDE` or whose memory peak is above what this
    machine has available, naming the largest value of a knob that fits: the first of
    ``given`` (setting names the user chose: size, views, steps, rows or batch) that can,
    else size, views, steps, rows in that order. ``rows_name`` is the knob that sets the rows
    (``--batch``) and ``noun`` what they are; ``cost``: the render's :func:`render_cost`."""
    request = RenderRequest.of(model, settings, rows, given)
    free = available_memory(model.device)
    oversize = max(request.side) > MAX_SIDE
    if free is None and not oversize:
        return
    cost = cost or render_cost(model, objective, settings)
    budget = None if free is None else int(free * USABLE)
    if oversize:
        fit = _largest(request, cost, "size", budget)
        where = "" if free is None else f" in the {readable_bytes(free)} available"
        fits = f"the largest --size that fits{where} is {fit}" if fit else _no_fit("--size")
        raise ConvsightError(
            f"--size {max(request.side)} is more than convsight renders (at most {MAX_SIDE} "
            f"pixels a side); {fits}"
        )
    need = request.peak(cost)
    if budget is None or need <= budget:
        return
    assert free is not None  # budget is None only when free is
    knob, fit = _knob_to_lower(request, cost, budget)
    flag = _flag(knob, rows_name)
    lead = f"{flag} {request.value(knob)}" if knob in request.given else "the render"
    fits = f"the largest {flag} that fits is {fit}" if fit else _no_fit(flag)
    raise ConvsightError(
        f"{lead} needs about {readable_bytes(need)} for {what} ({rows} {noun} of "
        f"{request.side[0]}x{request.side[1]} px, {request.views} "
        f"{'view' if request.views == 1 else 'views'} a step); "
        f"{describe_available(model.device, free)}; {fits}"
    )


def _knob_to_lower(request: RenderRequest, cost: RenderCost, budget: int) -> tuple[str, int | None]:
    """The knob to name and its largest value that fits: the first the user chose that fits
    when lowered alone, else the first of size, views, steps, rows that does."""
    order = [*request.given, *(k for k in _KNOBS if k not in request.given)]
    for knob in order:
        fit = _largest(request, cost, knob, budget)
        if fit is not None and fit < request.value(knob):
            return knob, fit
    return order[0], None


def _no_fit(flag: str) -> str:
    return f"no {flag} fits without lowering the others"


def check_steps(steps: int, yes: bool) -> None:
    """Steps above :data:`MAX_STEPS` need ``yes`` (``--yes``): one sentence otherwise."""
    if steps > MAX_STEPS and not yes:
        raise ConvsightError(
            f"--steps {steps} is more than the {MAX_STEPS} steps convsight runs without "
            "--yes (the presets take 20 and 256); pass --yes to run it anyway"
        )
