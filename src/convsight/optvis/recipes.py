"""Recipes: the objects a preset's settings build for a model (parameterization, transforms,
optimizer, step callbacks, the sequence of model hooks, penalties, the class objective), ready for
:func:`convsight.optvis.render.render`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from convsight.engines import memory_format_for
from convsight.errors import ConvsightError, substituted
from convsight.layers import capture
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.callbacks import (
    Averaging,
    Callback,
    CoarseSteps,
    CoarseToFine,
    DeadRows,
    OnStep,
    PeriodicBlur,
    Schedule,
    Snapshots,
    StopWhenFlat,
)
from convsight.optvis.forward import Execution, probe_shapes
from convsight.optvis.model_hooks import BatchNormPrior, GhostNoise, ModelHook, SkipGradient
from convsight.optvis.objectives import OUTPUT, Objective
from convsight.optvis.param import (
    MIN_COARSE_SIDE,
    FourierImage,
    ImageParam,
    PhaseImage,
    PixelImage,
)
from convsight.optvis.settings import RenderSettings, settings_for, validate_settings
from convsight.optvis.transforms import CenterCrop, Transform, standard_transforms


def row_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def penalties(settings: RenderSettings) -> Objective | None:
    """The penalty part of the objective the settings ask for (None if none)."""
    parts = []
    if settings.l1:
        parts.append(settings.l1 * obj.l1())
    if settings.l2:
        parts.append(settings.l2 * obj.l2())
    if settings.tv:
        parts.append(settings.tv * obj.total_variation())
    if settings.blur:
        parts.append(settings.blur * obj.blur())
    if settings.activation_penalty:
        parts.append(settings.activation_penalty * obj.activation_penalty(settings.penalty_layers))
    return sum(parts) if parts else None  # type: ignore[return-value]


def make_param(
    model: Model,
    settings: RenderSettings,
    generators: Sequence[torch.Generator],
    init_pixels: torch.Tensor | None = None,
) -> ImageParam:
    """The parameterization of the settings, from noise or from ``init_pixels`` (N x C x H x W)."""
    size = image_size(model, settings)
    if init_pixels is not None:
        if init_pixels.dim() != 4 or init_pixels.shape[0] != len(generators):
            raise ConvsightError(
                f"start images have shape {tuple(init_pixels.shape)}, "
                f"need {len(generators)} x C x H x W"
            )
        if tuple(init_pixels.shape[1:]) != (model.card.channels, *size):
            init_pixels = torch.nn.functional.interpolate(
                init_pixels.float(), size=size, mode="bilinear", align_corners=False
            )
        if settings.param == "pixel":
            return PixelImage.from_pixels(model, init_pixels)
        kind = PhaseImage if settings.param == "maco" else FourierImage
        return kind.from_pixels(
            init_pixels.to(model.device), settings.decorrelate, settings.decay_power
        )
    if settings.param == "pixel":
        return PixelImage.normal(model, generators, size, settings.init_std)
    kind = PhaseImage if settings.param == "maco" else FourierImage
    return kind.normal(
        model, generators, size, settings.init_std, settings.decorrelate, settings.decay_power
    )


def image_size(model: Model, settings: RenderSettings) -> tuple[int, int]:
    if settings.size is None:
        return tuple(model.card.input_size)  # type: ignore[return-value]
    return (settings.size, settings.size)


def make_transforms(settings: RenderSettings) -> list[Transform]:
    return standard_transforms(
        settings.pad,
        settings.jitter,
        settings.scales,
        settings.angles,
        settings.jitter_after,
        settings.noise,
        settings.flip,
        settings.color_shift,
    )


def fits(model: Model, objective: Objective, x: torch.Tensor, batch: int) -> bool:
    """Whether the forward ``objective`` needs runs on inputs shaped like ``x`` and gives the
    shapes it was built for: not so for a flatten + dense head, nor for a direction on the
    head's input (the class objective ``cossim``), at another size than the model's own."""
    try:
        with torch.no_grad():
            objective.check(probe_shapes(model, objective, x[:1]), batch)
    except Exception:  # noqa: BLE001 - any framework's shape error (Keras raises ValueError)
        return False
    return True


def fixed_size_crop(
    model: Model, objective: Objective, start: torch.Tensor, pad: int, batch: int = 1
) -> CenterCrop | None:
    """A crop of the transformed views back to the start size when ``objective`` does not
    fit padded views (:func:`fits`); None when any size works, so a fully convolutional
    model sees its views as they are."""
    if pad <= 0:
        return None
    bigger = nn.functional.pad(start[:1], (pad, pad, pad, pad))
    if fits(model, objective, bigger, batch):
        return None
    return CenterCrop((start.shape[-2], start.shape[-1]))


def check_size(
    model: Model, objective: Objective, settings: RenderSettings, batch: int = 1
) -> None:
    """A render ``size`` other than the model's input size fails here, in one sentence, when
    ``objective`` fits only the model's own size (a flatten + dense head)."""
    size = image_size(model, settings)
    own = tuple(model.card.input_size)
    if size == own:
        return
    example = model.example_input()
    if fits(model, objective, example.new_zeros(*example.shape[:2], *size), batch):
        return
    if fits(model, objective, example, batch):
        raise ConvsightError(
            f"{model.card.name} takes only {own[0]}x{own[1]} images for {objective.description}"
            f" (a fixed-size head), not {size[0]}x{size[1]}: leave --size out"
        )


class NormalizedAscent(torch.optim.SGD):
    """Plain gradient ascent along the gradient divided by its RMS per row (Chollet's
    recipe; the study's optimizer)."""

    def step(self, closure=None):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        rms = p.grad.flatten(1).pow(2).mean(1).sqrt()
                        p.grad.div_((rms + 1e-8).view(-1, *[1] * (p.grad.dim() - 1)))
        return super().step(closure)


def make_optimizer(settings: RenderSettings, param: ImageParam) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(param.params, lr=settings.lr)
    kind = NormalizedAscent if settings.normalize_grad else torch.optim.SGD
    return kind(param.params, lr=settings.lr)


def make_callbacks(
    settings: RenderSettings,
    optimizer: torch.optim.Optimizer,
    snapshots: Sequence[int] = (),
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> list[Callback]:
    """The step callbacks of the settings, in the order the render calls them."""
    callbacks: list[Callback] = []
    if settings.coarse_steps:
        callbacks.append(CoarseSteps(settings.coarse_steps))
    if settings.coarse_to_fine:
        callbacks.append(CoarseToFine(settings.coarse_to_fine))
    callbacks.append(DeadRows(settings.dead_steps))
    if settings.stop_when_flat:
        callbacks.append(StopWhenFlat(settings.stop_when_flat))
    if settings.average:
        callbacks.append(Averaging(settings.average))
    if settings.lr_schedule == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.steps, eta_min=settings.lr * 0.05
        )
        callbacks.append(Schedule(cosine))
    if settings.blur_every:
        callbacks.append(PeriodicBlur(settings.blur_every, settings.blur_sigma))
    if snapshots:
        callbacks.append(Snapshots(snapshots))
    if on_step is not None:
        callbacks.append(OnStep(on_step))
    return callbacks


def make_hooks(model: Model, settings: RenderSettings) -> list[ModelHook]:
    """The model hooks the settings switch on, in the order a render enters them."""
    hooks: list[ModelHook] = []
    if settings.ghost > 0:
        hooks.append(GhostNoise(model.module, settings.ghost))
    if settings.bn_prior > 0:
        hooks.append(BatchNormPrior(model.module, settings.bn_prior))
    if settings.skip_gradient < 1:
        hooks.append(SkipGradient(model.module, settings.skip_gradient))
    return hooks


@dataclass
class Recipe:
    """The built objects of one render: the arguments of :func:`convsight.optvis.render.render`
    after the model (``render(model, **recipe.parts())``)."""

    objective: Objective
    param: ImageParam
    transforms: list[Transform]
    optimizer: torch.optim.Optimizer
    steps: int
    callbacks: list[Callback]
    generators: list[torch.Generator]
    views: int
    hooks: list[ModelHook]
    execution: Execution

    def parts(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def build(
    model: Model,
    objective: Objective,
    batch: int,
    settings: RenderSettings,
    seeds: Sequence[int] | None = None,
    init_pixels: torch.Tensor | None = None,
    snapshots: Sequence[int] = (),
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> Recipe:
    """The objects ``settings`` describe for ``batch`` rows of ``objective`` (its penalties
    subtracted). ``seeds`` (one per row, default 0..N-1) seed each row's start and
    transforms, so a row renders the same whatever the rest of the batch."""
    validate_settings(settings)
    seeds = list(range(batch)) if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise ConvsightError(f"{len(seeds)} seeds for {batch} rows")
    extra = penalties(settings)
    full = objective if extra is None else objective - extra
    check_size(model, full, settings, batch)
    generators = row_generators(seeds)
    param = make_param(model, settings, generators, init_pixels)
    with torch.no_grad():
        start = param.model_input(model).contiguous()  # the probe below runs in either layout
    transforms = make_transforms(settings)
    crop = fixed_size_crop(model, full, start, settings.pad, batch)
    if crop is not None:
        transforms.append(crop)
    settings, full_size = coarse_or_full(model, full, settings, start, crop, batch)
    optimizer = make_optimizer(settings, param)
    run = execution(model, settings, full.layers)
    run = dataclasses.replace(run, note="; ".join(filter(None, [run.note, full_size])))
    return Recipe(
        objective=full,
        param=param,
        transforms=transforms,
        optimizer=optimizer,
        steps=settings.steps,
        callbacks=make_callbacks(settings, optimizer, snapshots, on_step),
        generators=generators,
        views=settings.views,
        hooks=make_hooks(model, settings),
        execution=run,
    )


def coarse_or_full(
    model: Model,
    objective: Objective,
    settings: RenderSettings,
    start: torch.Tensor,
    crop: CenterCrop | None,
    batch: int,
) -> tuple[RenderSettings, str]:
    """``settings`` as they are when their coarse steps can run on this model, else without
    them and a note saying why (a model that takes only its own size cannot see small
    images): the render then costs what a full-size one does, and says so."""
    if not settings.coarse_steps:
        return settings, ""
    smallest = max(MIN_COARSE_SIDE, 2 * round(min(start.shape[-2:]) * CoarseSteps.SCALES[0] / 2))
    small = start[:1, :, :smallest, :smallest]
    if crop is None and fits(model, objective, small, batch):
        return settings, ""
    full = dataclasses.replace(settings, coarse_steps=0.0)
    return full, (
        f"every step at full size: {model.card.name} does not take {smallest}x{smallest} "
        f"images for {objective.description}, so coarse-steps={settings.coarse_steps} is off"
    )


def execution(model: Model, settings: RenderSettings, layers: Sequence[str] = ()) -> Execution:
    """How the passes run; channels-last only where a probe (truncated at ``layers``, the
    layers the objective reads, when none is the model's output) shows this model allows it."""
    probe = None if not layers or OUTPUT in layers else layers
    layout, why_not = memory_format_for(model, probe) if settings.channels_last else (None, None)
    return Execution(
        settings.chunk,
        settings.precision,
        layout == torch.channels_last,
        settings.slice_channels,
        note=f"contiguous memory format: {why_not}" if why_not else "",
    )


def preset(
    name: str,
    model: Model,
    objective: Objective,
    batch: int,
    target: str = "channel",
    seeds: Sequence[int] | None = None,
    **overrides: Any,
) -> Recipe:
    """A preset as a recipe: the objects of :data:`PRESETS` ``name`` (with its class-model
    defaults for ``target="class"``) and ``overrides``, e.g.
    ``render(model, **preset("paper", model, channel("features.0", [0, 1]), 2).parts())``."""
    return build(model, objective, batch, settings_for(name, target, **overrides), seeds)


def paper(model: Model, objective: Objective, batch: int, **overrides: Any) -> Recipe:
    """The study as written: pixel-space start, RMS-normalized gradient ascent, minus L1."""
    return preset("paper", model, objective, batch, **overrides)


def robust(model: Model, objective: Objective, batch: int, **overrides: Any) -> Recipe:
    """Fourier + decorrelated colour, Lucid's transforms, Adam."""
    return preset("robust", model, objective, batch, **overrides)


def class_objective(
    model: Model, classes: Sequence[int], kind: str = "logit", power: float = 2.0
) -> Objective:
    """The class objective ``kind`` of the settings (a :data:`~objectives.ClassScore` or
    ``"cossim"``) for ``classes``, described by their labels."""
    labels = ", ".join(model.card.label(c) for c in classes[:4])
    if len(classes) > 4:
        labels += f", ... ({len(classes)})"
    if kind == "cossim":
        found = _penultimate(model)
        if found is not None and _feeds_head(model, *found):
            layer, head = found
            weight = head.weight.detach().float().cpu()
            vectors = (weight - weight.mean(0))[list(classes)]
            return obj.direction_cossim(layer, vectors, power, label=labels)
        kind = "margin"  # no nn.Linear head fed by a layer's vector output (e.g. TorchScript)
        substituted(
            "the class objective is 'margin' (the class score minus the mean score), not "
            f"'cossim': model '{model.card.name}' has no nn.Linear head that reads one feature "
            "vector per image"
        )
    return obj.class_score(list(classes), cast(obj.ClassScore, kind), label=labels)


def _penultimate(model: Model) -> tuple[str, nn.Linear] | None:
    """(name of the layer registered just before the last nn.Linear, that Linear), or None.

    In a torchvision classifier that layer feeds the head (MobileNet's dropout, ResNet's
    average pool); the direction objective's shape check catches a model where it does not.
    """
    found = None
    for name, parent in model.module.named_modules():
        children = list(parent.named_children())
        for i in range(1, len(children)):
            if isinstance(children[i][1], nn.Linear):
                before = children[i - 1][0]
                found = (f"{name}.{before}" if name else before, children[i][1])
    return found


def _feeds_head(model: Model, layer: str, head: nn.Linear) -> bool:
    """Whether ``layer`` outputs one vector per row (no spatial extent) that is exactly what
    ``head`` reads: not so when the forward flattens a feature map with ``x.view`` itself."""
    read: dict[str, torch.Tensor] = {}
    handle = head.register_forward_pre_hook(lambda _m, args: read.setdefault("x", args[0]))
    h, w = model.card.input_size
    probe = torch.rand(1, model.card.channels, h, w, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), capture(model.module, [layer]) as outputs:
            model.module(model.normalize(probe.to(model.device)))
    finally:
        handle.remove()
    out, x = outputs.get(layer), read.get("x")
    if out is None or x is None or out[0].numel() != out.shape[1]:
        return False
    return out.flatten(1).shape == x.shape and torch.equal(out.flatten(1), x)
