"""The loop: optimize an image batch so each row maximizes its objective.

:func:`render` takes built objects (Lucid's ``render_vis``): the objective, the
parameterization, the transforms, the optimizer, the step count and step callbacks, plus the
rows' generators, the model hooks (context managers it enters without knowing their kinds,
:mod:`convsight.optvis.model_hooks`) and how the forward passes run. A preset is a recipe that
builds them (:func:`convsight.optvis.recipes.build` from :class:`RenderSettings`);
:func:`render_settings`, :func:`render_channels` and :func:`render_classes` do both.

One batch row per channel (or class); the forward pass stops at the deepest layer the
objective needs; model parameters take no gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from convsight.errors import ConvsightError
from convsight.layers import check_layers
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.callbacks import Callback, CallbackList, RenderState
from convsight.optvis.channels import MAX_CHANNELS, channel_seeds, parse_channels
from convsight.optvis.forward import Execution, Forward, probe_shapes
from convsight.optvis.model_hooks import ModelHook, entered, pass_hooks
from convsight.optvis.objectives import Context, Objective
from convsight.optvis.param import ImageParam
from convsight.optvis.recipes import build, class_objective, make_param, row_generators
from convsight.optvis.settings import CLASS_PRESETS, PRESETS, RenderSettings, settings_for
from convsight.optvis.transforms import Compose, RowRandom, Transform
from convsight.progress import progress_bar
from convsight.targets import OneTarget, resolve_targets

__all__ = [
    "CLASS_PRESETS",
    "MAX_CHANNELS",
    "PRESETS",
    "RenderResult",
    "RenderSettings",
    "make_param",
    "parse_channels",
    "probe_shapes",
    "render",
    "render_channels",
    "render_classes",
    "render_settings",
    "row_generators",
    "settings_for",
]


@dataclass
class RenderResult:
    """Images in pixel space ([0, 1]), the final objective per row, dead rows, settings."""

    images: torch.Tensor
    values: torch.Tensor
    dead: list[int]
    settings: dict[str, Any]
    seconds: float
    description: str = ""
    trace: torch.Tensor | None = None  # steps x N: objective (with penalties) at each step
    steps_run: int = 0  # the steps taken (fewer than asked when the objective stopped rising)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


def render(
    model: Model,
    objective: Objective,
    param: ImageParam,
    transforms: Sequence[Transform],
    optimizer: torch.optim.Optimizer,
    steps: int,
    callbacks: Sequence[Callback] = (),
    *,
    generators: Sequence[torch.Generator],
    views: int = 1,
    hooks: Sequence[AbstractContextManager[Any]] = (),
    execution: Execution | None = None,
    progress: bool = False,
    description: str = "render",
) -> RenderResult:
    """Optimize ``param`` (one image per row) so that row i maximizes row i of ``objective``.

    ``generators`` (one per row) draw each row's transforms (``views`` transformed copies per
    step, gradient averaged) and model noise; ``hooks`` are entered for the render only (a
    :class:`~convsight.optvis.model_hooks.ModelHook` also acts around each forward pass).
    Layers and channel/class indices are checked before the first step.
    """
    execution, per_pass = execution or Execution(), pass_hooks(hooks)
    passes = _Passes(model, objective, param, Compose(transforms), generators, views, execution)
    state, each = RenderState(objective, param, steps, passes.batch), CallbackList(callbacks)
    began = time.perf_counter()
    with execution.on(model.module, model.device), entered(hooks), progress_bar(progress) as bar:
        task = bar.add_task(description, total=steps, status="")
        each.begin(state)
        taken = 0
        for step in range(steps):
            state.step, state.main = step, torch.zeros(passes.batch)
            optimizer.zero_grad(set_to_none=True)
            each.start_step(state)
            for part in passes.chunks:
                passes.backward(part, per_pass, state)
            each.before_update(state)
            optimizer.step()
            each.end_step(state)
            bar.update(task, advance=1, status=f"objective {float(state.main.mean()):.3g}")
            taken += 1
            if state.stopped:
                break
        each.finish(state)
        images, values = passes.final()
    notes = [objective.description, *(hook.describe() for hook in per_pass), execution.note]
    return RenderResult(
        images=images.clamp(0, 1).cpu().contiguous(),  # the layout a user's .view() expects
        values=values,
        dead=[int(i) for i in state.dead.nonzero()],
        settings={},
        seconds=time.perf_counter() - began,
        description="; ".join(filter(None, notes)),
        trace=state.trace[:taken],
        snapshots=state.snapshots,
        steps_run=taken,
    )


class _Passes:
    """The forward passes of one render (a training step on some rows, the final values),
    set up and checked before any step: unknown layers and channel/class indices fail here."""

    def __init__(
        self,
        model: Model,
        objective: Objective,
        param: ImageParam,
        transforms: Compose,
        generators: Sequence[torch.Generator],
        views: int,
        execution: Execution,
    ) -> None:
        self.model, self.objective, self.param = model, objective, param
        self.transforms, self.views, self.execution = transforms, views, execution
        self.generators, self.batch = generators, len(generators)
        self.forward = Forward(model, objective, execution.slice_channels)
        with torch.no_grad():
            start = param.model_input(model).contiguous(memory_format=execution.memory_format)
        objective.check(probe_shapes(model, objective, start), self.batch)
        size = (start.shape[-2], start.shape[-1])
        self.chunks = execution.chunks(model.device, self.batch, size, objective.coupled)

    def _context(
        self,
        acts: dict[str, torch.Tensor],
        pixels: torch.Tensor,
        inputs: torch.Tensor,
        views: int,
        part: slice,
    ) -> Context:
        rows = torch.arange(self.batch)[part]
        return Context(acts, pixels, inputs, views, rows, self.forward.sliced)

    def backward(self, part: slice, hooks: Sequence[ModelHook], state: RenderState) -> None:
        """Gradients of the objective of rows ``part``; its value goes into the state."""
        rng = RowRandom(self.generators[part], self.views)
        with entered([hook.around_pass(rng) for hook in hooks]):
            total = self.objective_of(part, rng, state.main)
        for hook in hooks:
            total = hook.adjust(total, self.views)
        state.trace[state.step, part] = total.detach().cpu()
        (-total.sum()).backward()

    def objective_of(self, part: slice, rng: RowRandom, main: torch.Tensor) -> torch.Tensor:
        """The objective of rows ``part`` (with penalties); ``main`` gets it without them."""
        model, views, execution = self.model, self.views, self.execution
        pixels = self.param.pixels(part)
        untransformed = self.param.model_input(model, pixels, part)
        x = untransformed
        if self.transforms.transforms or views > 1:
            x = model.normalize(self.transforms(pixels, rng))
        x = x.contiguous(memory_format=execution.memory_format)
        with execution.autocast(model.device):
            acts = self.forward(x, torch.arange(self.batch)[part], views)
        acts = {k: v.float() for k, v in acts.items()}
        ctx = self._context(acts, pixels, untransformed, views, part)
        total: torch.Tensor | int = 0
        for weight, term in self.objective.terms():
            value = term(ctx)
            total = total + weight * value
            if not term.penalty:
                main[part] += weight * value.detach().cpu()
        assert isinstance(total, torch.Tensor)  # terms() is never empty
        return total

    @torch.no_grad()
    def final(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (pixel space) and the objective of each row, untransformed."""
        images = self.param.pixels().detach()
        values = torch.zeros(self.batch)
        for part in self.chunks:
            inp = self.param.model_input(self.model, images[part], part)
            fmt = self.execution.memory_format
            acts = self.forward(inp.contiguous(memory_format=fmt), torch.arange(self.batch)[part])
            ctx = self._context(acts, images[part], inp, 1, part)
            values[part] = self.objective(ctx).detach().cpu()
        return images, values


def render_settings(
    model: Model,
    objective: Objective,
    batch: int,
    settings: RenderSettings | None = None,
    seeds: Sequence[int] | None = None,
    init_pixels: torch.Tensor | None = None,
    progress: bool = False,
    description: str = "render",
    snapshots: Sequence[int] = (),
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> RenderResult:
    """Render ``batch`` rows of ``objective`` with the objects ``settings`` describe (default:
    the robust preset; see :func:`convsight.optvis.recipes.build`). ``snapshots`` lists steps
    whose images are kept as well; ``callback(step, objective per row)`` runs after each."""
    settings = settings or settings_for("robust")
    recipe = build(model, objective, batch, settings, seeds, init_pixels, snapshots, callback)
    result = render(model, **recipe.parts(), progress=progress, description=description)
    result.settings = settings.to_dict()
    return result


def _render_rows(model, rows, settings, init_pixels, progress, description, snapshots=()):
    """Render ``rows`` = (objective, the channel or class of each row, seed): each row seeded
    from (seed, its channel or class)."""
    objective, keys, seed = rows
    return render_settings(
        model,
        objective,
        len(keys),
        settings,
        channel_seeds(seed, keys),
        init_pixels,
        progress,
        description,
        snapshots,
    )


def _chosen(
    settings: RenderSettings | None, preset: str, target: str, overrides: dict[str, Any]
) -> RenderSettings:
    if settings is None:
        return settings_for(preset, target, **overrides)
    if any(value is not None for value in overrides.values()):
        raise ConvsightError("give render settings or overrides of a preset, not both")
    return settings


def render_targets(
    model: Model,
    targets: Sequence[OneTarget],
    preset: str = "robust",
    seed: int = 0,
    init_pixels: torch.Tensor | None = None,
    progress: bool = False,
    settings: RenderSettings | None = None,
    **overrides: Any,
) -> RenderResult:
    """One image per target (:mod:`convsight.targets`: a class, a margin, a segment, an
    output of a regression net, a function of the output) maximizing its score. Row i is
    seeded from (seed, its class) for class targets, else (seed, i). The settings are
    ``preset`` with its class defaults and ``overrides``, or ``settings``; their class
    objective applies to :func:`render_classes`, not here: each target is its own score."""
    settings = _chosen(settings, preset, "class", overrides)
    bound = resolve_targets(model, list(targets), len(targets)) if targets else None
    if bound is None:
        raise ConvsightError("no targets given")
    keys = bound.classes() or list(range(len(targets)))  # seeds as render_classes's
    rows = (obj.target_score(bound), keys, seed)
    description = f"{len(targets)} targets"
    return _render_rows(model, rows, settings, init_pixels, progress, description)


def render_channels(
    model: Model,
    layer: str,
    channels: Sequence[int],
    preset: str = "robust",
    seed: int = 0,
    progress: bool = False,
    init_pixels: torch.Tensor | None = None,
    settings: RenderSettings | None = None,
    **overrides: Any,
) -> RenderResult:
    """One image per channel of ``layer`` (one batch row each) maximizing its mean activation.

    The settings are ``preset`` with ``overrides``, or ``settings`` as given. Row seeds come
    from (seed, channel), so channel c looks the same rendered alone or in a batch (to float
    tolerance).
    """
    settings = _chosen(settings, preset, "channel", overrides)
    channels = [int(c) for c in channels]
    if not channels:
        raise ConvsightError("no channels given")
    check_layers(model.module, [layer])
    description = f"{layer}: {len(channels)} channels"
    rows = (obj.channel(layer, channels), channels, seed)
    return _render_rows(model, rows, settings, init_pixels, progress, description)


def render_classes(
    model: Model,
    classes: Sequence[int | str],
    preset: str = "robust",
    seed: int = 0,
    init_pixels: torch.Tensor | None = None,
    progress: bool = False,
    snapshots: Sequence[int] = (),
    settings: RenderSettings | None = None,
    **overrides: Any,
) -> RenderResult:
    """One image per class (names or indices) maximizing its score before softmax.

    The settings are ``preset`` with its class defaults and ``overrides``, or ``settings`` as
    given. ``init_pixels`` (N x C x H x W, pixel space) starts from given images, e.g. the
    class means of :func:`convsight.optvis.means.class_mean_images`.
    """
    settings = _chosen(settings, preset, "class", overrides)
    indices = [model.class_index(c) for c in classes]
    if not indices:
        raise ConvsightError("no classes given")
    objective = class_objective(model, indices, settings.class_objective, settings.cossim_power)
    rows = (objective, indices, seed)
    description = f"{len(indices)} classes"
    return _render_rows(model, rows, settings, init_pixels, progress, description, snapshots)
