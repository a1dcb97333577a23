"""What a render does around its steps: step callbacks (coarse to fine, coarse steps,
stopping once flat, dead rows, parameter averaging, a learning rate schedule, periodic blur,
snapshots). The model hooks it switches on for its duration (ghost noise, batch norm prior,
skip gradient) are in :mod:`convsight.optvis.model_hooks`.

A callback sees a :class:`RenderState` at four points of the loop (:class:`Callback`); the
render calls the callbacks in list order, so a later one sees what an earlier one changed
(the blur keeps the rows that :class:`DeadRows` found dead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from convsight.optvis.objectives import Objective
from convsight.optvis.param import ImageParam
from convsight.optvis.transforms import gaussian_blur


@dataclass
class RenderState:
    """The loop as callbacks see it: ``main`` is this step's objective per row without the
    penalties, ``trace`` the full objective per step and row, ``dead`` the rows that take no
    step, ``snapshots`` images kept by step."""

    objective: Objective
    param: ImageParam
    steps: int
    batch: int
    step: int = 0
    stopped: bool = False  # set by a callback: no further step
    main: torch.Tensor = field(init=False)
    trace: torch.Tensor = field(init=False)
    dead: torch.Tensor = field(init=False)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.main = torch.zeros(self.batch)
        self.trace = torch.zeros(self.steps, self.batch)
        self.dead = torch.zeros(self.batch, dtype=torch.bool)


class Callback:
    """A hook into the render loop; each method does nothing unless overridden."""

    def begin(self, state: RenderState) -> None:
        """Once, before the first step."""

    def start_step(self, state: RenderState) -> None:
        """Before the forward passes of ``state.step``."""

    def before_update(self, state: RenderState) -> None:
        """Gradients known, before the optimizer steps."""

    def end_step(self, state: RenderState) -> None:
        """After the optimizer stepped."""

    def finish(self, state: RenderState) -> None:
        """Once, after the last step, before the final images are read."""


class CallbackList(Callback):
    """Several callbacks as one, called in list order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, method: str, state: RenderState) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(state)

    def begin(self, state: RenderState) -> None:
        self._each("begin", state)

    def start_step(self, state: RenderState) -> None:
        self._each("start_step", state)

    def before_update(self, state: RenderState) -> None:
        self._each("before_update", state)

    def end_step(self, state: RenderState) -> None:
        self._each("end_step", state)

    def finish(self, state: RenderState) -> None:
        self._each("finish", state)


class CoarseToFine(Callback):
    """Fourier parameterization: over ``fraction`` of the steps the highest frequency the
    image may hold rises linearly from 1/8 of the band to all of it."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def start_step(self, state: RenderState) -> None:
        rise = (state.step + 1) / (self.fraction * state.steps)
        state.param.band = min(1.0, 0.125 + 0.875 * rise)  # type: ignore[attr-defined]


class CoarseSteps(Callback):
    """Fourier parameterization: the first ``fraction`` of the steps draw the image small
    (its low frequencies only: a quarter of the side for the first half of them, then half),
    the rest at full size. A step at half the side costs about a quarter of a full one."""

    SCALES = (0.25, 0.5)

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def start_step(self, state: RenderState) -> None:
        coarse = self.fraction * state.steps
        stage = int(len(self.SCALES) * state.step / coarse) if state.step < coarse else None
        state.param.resolution = 1.0 if stage is None else self.SCALES[stage]  # type: ignore[attr-defined]

    def finish(self, state: RenderState) -> None:
        state.param.resolution = 1.0  # type: ignore[attr-defined]


FLAT_RISE = 0.01  # a rise under this fraction of the objective's size is no rise


def is_flat(trace: torch.Tensor, step: int, window: int, rise: float = FLAT_RISE) -> bool:
    """Whether every column (row of the batch) of ``trace`` (steps x rows) rose by under
    ``rise`` of its size from ``step - window`` to ``step``; False before ``window`` steps."""
    if step < window or trace.shape[1] == 0:
        return False
    now, before = trace[step], trace[step - window]
    return bool((now - before < rise * now.abs().clamp_min(1e-6)).all())


class StopWhenFlat(Callback):
    """End the render once no live row's objective has risen by more than ``rise`` (a
    fraction of its size) over the last ``window`` steps: the steps left would add little."""

    def __init__(self, window: int, rise: float = FLAT_RISE) -> None:
        self.window, self.rise = window, rise

    def end_step(self, state: RenderState) -> None:
        live = state.trace[:, ~state.dead]
        state.stopped = is_flat(live, state.step, self.window, self.rise)


class DeadRows(Callback):
    """A row whose objective is exactly 0 for the first ``steps`` steps is dead: it takes no
    step and keeps its start image."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.start: list[torch.Tensor] = []

    def begin(self, state: RenderState) -> None:
        self.start = [p.detach().clone() for p in state.param.params]
        self.alive = torch.zeros(state.batch, dtype=torch.bool)
        self.judged = any(not t.penalty for _, t in state.objective.terms())

    def before_update(self, state: RenderState) -> None:
        if state.step < self.steps and self.judged:
            self.alive |= state.main != 0
            if state.step == min(self.steps, state.steps) - 1:
                state.dead = ~self.alive
        if state.dead.any():
            for p in state.param.params:
                if p.grad is not None:
                    p.grad[state.dead.to(p.device)] = 0

    def end_step(self, state: RenderState) -> None:
        if state.dead.any():
            with torch.no_grad():
                for p, p0 in zip(state.param.params, self.start, strict=True):
                    p[state.dead.to(p.device)] = p0[state.dead.to(p.device)]


class Averaging(Callback):
    """Keep an exponential moving average of the parameters (``decay``); the final image is
    the average."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.averaged: list[torch.Tensor] = []

    def begin(self, state: RenderState) -> None:
        self.averaged = [p.detach().clone() for p in state.param.params]

    def end_step(self, state: RenderState) -> None:
        with torch.no_grad():
            for avg, p in zip(self.averaged, state.param.params, strict=True):
                avg.lerp_(p, 1 - self.decay)

    def finish(self, state: RenderState) -> None:
        with torch.no_grad():
            for avg, p in zip(self.averaged, state.param.params, strict=True):
                p.copy_(avg)


class Schedule(Callback):
    """Step a learning rate scheduler after every step."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def end_step(self, state: RenderState) -> None:
        self.scheduler.step()


class PeriodicBlur(Callback):
    """Pixel parameterization: blur the image every ``every`` steps (dead rows kept)."""

    def __init__(self, every: int, sigma: float = 0.5) -> None:
        self.every, self.sigma = every, sigma

    def end_step(self, state: RenderState) -> None:
        if (state.step + 1) % self.every:
            return
        dead = state.dead
        with torch.no_grad():
            for p in state.param.params:
                keep = p[dead].clone()
                p.copy_(gaussian_blur(p, self.sigma))
                p[dead] = keep


class Snapshots(Callback):
    """Keep the images (pixel space, on the CPU) after each step count in ``steps``."""

    def __init__(self, steps: Sequence[int]) -> None:
        self.steps = steps

    def end_step(self, state: RenderState) -> None:
        if state.step + 1 in self.steps:
            with torch.no_grad():
                kept = state.param.pixels().detach().clamp(0, 1).cpu()
            state.snapshots[state.step + 1] = kept


class OnStep(Callback):
    """Call ``fn(step, objective per row)`` after every step."""

    def __init__(self, fn: Callable[[int, torch.Tensor], None]) -> None:
        self.fn = fn

    def end_step(self, state: RenderState) -> None:
        self.fn(state.step, state.trace[state.step])
