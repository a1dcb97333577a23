"""The loop: optimize an image batch so each row maximizes its objective.

One batch row per channel (or class); the forward pass stops at the deepest layer the
objective needs; model parameters take no gradient. Presets (``paper``, ``robust``) are sets
of defaults for :class:`RenderSettings`; every field can be overridden.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convsight.errors import ConvsightError
from convsight.layers import ELEMENTWISE_LAYERS, capture, check_layers, forward_to, get_layer
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.model_hooks import BatchNormPrior, GhostNoise, SkipGradient
from convsight.optvis.objectives import OUTPUT, Context, Objective, Rows
from convsight.optvis.param import FourierImage, ImageParam, PhaseImage, PixelImage
from convsight.optvis.transforms import (
    Compose,
    RowRandom,
    Transform,
    gaussian_blur,
    standard_transforms,
)
from convsight.progress import progress_bar


@dataclass
class RenderSettings:
    """Every knob of a render. A preset is only a set of defaults for these."""

    preset: str = "custom"
    steps: int = 256
    size: int | None = None  # None: the model's input size
    # what is optimized
    param: str = "fourier"  # "pixel" (model input space, the study) | "fourier" | "maco"
    # ("maco": fixed 1/f^decay magnitude spectrum and contrast, only the phase is optimized)
    decorrelate: bool = True
    init_std: float = 0.01  # std of the random start (input space for pixel, spectrum for fourier)
    decay_power: float = 1.0
    # fourier: over this fraction of the steps the highest frequency the image may hold
    # rises linearly from 1/8 of the band to all of it (coarse to fine; 0: all from the start)
    coarse_to_fine: float = 0.0
    # how
    optimizer: str = "adam"  # "ascent" (plain gradient ascent) | "adam"
    lr: float = 0.05
    normalize_grad: bool = False  # ascent: step along grad / RMS(grad) per row (Chollet's recipe)
    lr_schedule: str = "constant"  # "constant" | "cosine"
    # transforms (all pixel space); 0 / empty switches one off
    pad: int = 12
    jitter: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(list(range(-10, 11)) + 5 * [0])
    jitter_after: int = 4
    flip: bool = False  # mirror each view left-right with probability 1/2
    noise: float = 0.0  # std of Gaussian pixel noise added to each transformed view
    # random colour cast per view and channel: contrast x e^U(-a, a), offset U(-a, a) / 4
    color_shift: float = 0.0
    views: int = 1  # transformed views of each image per step (gradient averaged)
    blur_every: int = 0  # pixel param: blur the image every k steps (0: never)
    blur_sigma: float = 0.5
    # penalties (subtracted, weight x measure)
    l1: float = 0.0
    l2: float = 0.0
    tv: float = 0.0
    blur: float = 0.0
    activation_penalty: float = 0.0
    penalty_layers: tuple[str, ...] = ()
    # class objective: "logit" (score before softmax, the study) | "margin" (logit - mean
    # logit) | "logsoftmax" (log-probability: logit - logsumexp of all logits) | "cossim"
    # (features before the last dense layer: dot x max(cos, 0.1)^2 with the class's weights
    # minus the mean weights; "margin" for a model without an nn.Linear head)
    class_objective: str = "logit"
    cossim_power: float = 2.0  # "cossim": the power of the cosine
    dead_steps: int = 3  # a row whose objective is exactly 0 for these first steps is dead
    precision: str = "fp32"  # "fp32" | "bf16" (CPU/CUDA autocast)
    channels_last: bool = True  # CPU: run the model in channels-last memory format (faster)
    chunk: int = 0  # rows per forward/backward pass (0: auto; rows are independent)
    # model-side augmentation: each step multiplies every channel of every conv layer's output
    # by 1 + N(0, ghost^2), a slightly different network each step ("ghost networks")
    ghost: float = 0.0
    # prior: minus this weight x how far each batch norm layer's input statistics (per row and
    # channel: mean and variance over positions) are from the layer's running statistics
    bn_prior: float = 0.0
    # gradient through every residual branch times this (skip gradient method; 1: off)
    skip_gradient: float = 1.0
    average: float = 0.0  # EMA decay of the parameters; the final image is the average (0: off)
    slice_channels: bool = True  # channel objective on a conv: compute only the row's channel

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # The study as written: N(0, 1) start in input space, plain gradient ascent with step 0.5
    # along the RMS-normalized gradient, mean activation (or class score) minus 0.1 L1.
    "paper": dict(
        steps=20,
        param="pixel",
        decorrelate=False,
        init_std=1.0,
        optimizer="ascent",
        lr=0.5,
        normalize_grad=True,
        pad=0,
        jitter=0,
        scales=(),
        angles=(),
        jitter_after=0,
        l1=0.1,
    ),
    # What the field learned since: Fourier + decorrelated colour, Lucid's transforms, Adam.
    "robust": dict(
        steps=256,
        param="fourier",
        decorrelate=True,
        init_std=0.01,
        optimizer="adam",
        lr=0.05,
    ),
}


# For class models (render_classes) a preset adds these on top: the robust recipe tuned for
# images that another network also recognizes (benchmarks/classviz_quality.py, screened with
# benchmarks/classviz_screen.py): a wide random zoom (0.5-1.5: the class must be readable
# when shrunk to half size and when cropped to its central two thirds), Adam at a constant
# 0.05 (0.1 or 0.03, or a cosine decay from 0.1, did worse once the zoom is wide), the
# penultimate features' dot product with the class direction times their cosine squared
# ("cossim": as good as score minus mean score at 128 steps, better at 64), and the gradient
# through residual branches damped to 0.3 (the skip gradient method; by far the largest gain:
# the image follows the gradient that reaches it along skip connections, features less
# specific to this one network; off on a model without residual blocks). Tried and dropped
# (worse or within noise, 20 classes x 2 seeds): log-softmax (its gradient vanishes once the
# class wins, leaving adversarial noise), MACO-style fixed magnitude (param="maco"), decay
# power 0.75 or 1.5, zoom 0.3-1.7, pixel noise, flips, a random colour cast, ghost networks,
# a batch norm statistics prior, coarse-to-fine frequencies, parameter averaging.
CLASS_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "robust": dict(
        lr=0.05,
        lr_schedule="constant",
        scales=tuple(round(0.5 + 0.1 * i, 2) for i in range(11)),
        class_objective="cossim",
        skip_gradient=0.3,
    ),
}


def settings_for(
    preset: str = "robust", target: str = "channel", **overrides: Any
) -> RenderSettings:
    """The settings of ``preset`` with ``overrides`` (None values are ignored).

    ``target="class"`` adds the preset's class-model defaults (:data:`CLASS_PRESETS`).
    """
    if preset not in PRESETS:
        raise ConvsightError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(RenderSettings)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConvsightError(f"unknown render setting(s): {', '.join(unknown)}")
    base = {**PRESETS[preset], **(CLASS_PRESETS.get(preset, {}) if target == "class" else {})}
    settings = RenderSettings(**{**base, **given, "preset": preset})
    validate_settings(settings)
    return settings


def validate_settings(s: RenderSettings) -> None:
    """Bad values fail here, before any work."""
    checks = [
        (s.steps >= 1, f"steps must be at least 1, not {s.steps}"),
        (s.size is None or s.size >= 8, f"size must be at least 8 pixels, not {s.size}"),
        (s.param in ("pixel", "fourier", "maco"), f"unknown parameterization '{s.param}'"),
        (s.optimizer in ("ascent", "adam"), f"unknown optimizer '{s.optimizer}'"),
        (s.lr > 0, f"learning rate must be positive, not {s.lr}"),
        (s.lr_schedule in ("constant", "cosine"), f"unknown schedule '{s.lr_schedule}'"),
        (s.views >= 1, f"views must be at least 1, not {s.views}"),
        (s.chunk >= 0, f"chunk must be >= 0, not {s.chunk}"),
        (s.precision in ("fp32", "bf16"), f"unknown precision '{s.precision}'"),
        (
            s.class_objective in ("logit", "margin", "logsoftmax", "cossim"),
            f"unknown class objective '{s.class_objective}'",
        ),
        (
            s.blur_every == 0 or s.param == "pixel",
            "blur-every works on the pixel parameterization only",
        ),
        (min(s.l1, s.l2, s.tv, s.blur, s.activation_penalty) >= 0, "penalties must be >= 0"),
        (s.noise >= 0, f"noise must be >= 0, not {s.noise}"),
        (s.color_shift >= 0, f"color shift must be >= 0, not {s.color_shift}"),
        (s.ghost >= 0, f"ghost must be >= 0, not {s.ghost}"),
        (0 <= s.coarse_to_fine <= 1, f"coarse-to-fine must be in [0, 1], not {s.coarse_to_fine}"),
        (
            s.coarse_to_fine == 0 or s.param == "fourier",
            "coarse-to-fine works on the fourier parameterization only",
        ),
        (s.bn_prior >= 0, f"bn-prior must be >= 0, not {s.bn_prior}"),
        (
            0 < s.skip_gradient <= 1,
            f"skip-gradient must be in (0, 1], not {s.skip_gradient}",
        ),
        (s.cossim_power >= 0, f"cossim power must be >= 0, not {s.cossim_power}"),
        (0 <= s.average < 1, f"average must be in [0, 1), not {s.average}"),
        (
            s.activation_penalty == 0 or bool(s.penalty_layers),
            "an activation penalty needs penalty layers",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConvsightError(message)


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
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


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


def _crop_for_fixed_size(
    model: Model, objective: Objective, start: torch.Tensor, pad: int
) -> tuple[int, int] | None:
    """The size to crop transformed views back to when the forward the objective needs
    takes only its own input size (a flatten + dense head); None when any size works."""
    if pad <= 0:
        return None
    bigger = nn.functional.pad(start[:1], (pad, pad, pad, pad))
    try:
        with torch.no_grad():
            probe_shapes(model, objective, bigger)
    except RuntimeError:
        return (start.shape[-2], start.shape[-1])
    return None


def _center_crop(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class _StopAtInput(Exception):
    """Raised by a pre-hook once the target conv's input is known: the conv never runs."""


def sliced_target(objective: Objective) -> tuple[str, Rows] | None:
    """(layer, channels) if every non-penalty term reads one channel per row of one layer."""
    found = None
    for _, term in objective.terms():
        if term.penalty:
            if term.layers:
                return None
            continue
        if term.channel_of is None:
            return None
        if found is not None and (
            found[0] != term.channel_of[0]
            or list(np.atleast_1d(found[1])) != list(np.atleast_1d(term.channel_of[1]))
        ):
            return None
        found = term.channel_of
    return found


# Layers that act on each channel alone: a row's channel of their output needs only that
# channel of their input.
_CHANNELWISE = (*ELEMENTWISE_LAYERS, nn.MaxPool2d, nn.AvgPool2d)


def _conv_chain(module: nn.Module, name: str) -> tuple[nn.Conv2d, list[nn.Module]] | None:
    """(conv, layers after it) when ``name`` is a plain conv, or a per-channel layer that
    follows one in the same ``nn.Sequential`` with only per-channel layers between; else None."""
    layer = get_layer(module, name)
    after: list[nn.Module] = []
    if not isinstance(layer, nn.Conv2d):
        parent_name, _, last = name.rpartition(".")
        parent = get_layer(module, parent_name) if parent_name else module
        if not isinstance(parent, nn.Sequential) or not isinstance(layer, _CHANNELWISE):
            return None
        children = list(parent.named_children())
        i = [n for n, _ in children].index(last)
        while i >= 0 and isinstance(children[i][1], _CHANNELWISE):
            after.insert(0, children[i][1])
            i -= 1
        if i < 0:
            return None
        layer = children[i][1]
    if (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    ):
        return layer, after
    return None


def _per_channel(layer: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``layer`` on one channel per row (N x 1 x H x W, row i holding channel index[i])."""
    if isinstance(layer, nn.BatchNorm2d):
        if layer.training or layer.running_mean is None:
            raise ConvsightError("slicing through batch norm needs it in eval mode")
        shape = (-1, 1, 1, 1)
        mean, var = layer.running_mean[index].view(shape), layer.running_var[index].view(shape)
        out = (x - mean) / torch.sqrt(var + layer.eps)
        if layer.affine:
            out = out * layer.weight[index].view(shape) + layer.bias[index].view(shape)
        return out
    return layer(x)


class _Forward:
    """Run the model as far as the objective needs; return the needed outputs.

    With ``slice_channels`` and an objective on channels of one ``nn.Conv2d`` (one channel per
    row), the forward stops at that conv's input and computes only each row's own channel of
    it: the same values, 1/C of the target layer's work.
    """

    def __init__(self, model: Model, objective: Objective, slice_channels: bool = False) -> None:
        self.module = model.module
        layers = objective.layers
        self.names = [name for name in layers if name != OUTPUT]
        self.output = OUTPUT in layers
        check_layers(self.module, self.names)
        self.sliced: frozenset[str] = frozenset()
        target = sliced_target(objective) if slice_channels else None
        if target is not None and not self.output:
            chain = _conv_chain(self.module, target[0])
            if chain is not None:
                self.conv, self.after = chain
                self.channels = target[1]
                self.sliced = frozenset([target[0]])

    def _conv_input(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def hook(_module: nn.Module, inputs: tuple) -> None:
            seen.append(inputs[0])
            raise _StopAtInput

        handle = self.conv.register_forward_pre_hook(hook)
        try:
            self.module(x)
        except _StopAtInput:
            pass
        finally:
            handle.remove()
        if not seen:
            raise ConvsightError("the target layer did not run in the forward pass")
        return seen[0]

    def __call__(
        self, x: torch.Tensor, rows: torch.Tensor | None = None, views: int = 1
    ) -> dict[str, torch.Tensor]:
        if self.sliced:
            (name,) = self.sliced
            inp = self._conv_input(x)
            n, c, h, w = inp.shape
            if isinstance(self.channels, int):
                index = torch.full((n,), self.channels, dtype=torch.long)
            else:
                index = torch.as_tensor(list(self.channels), dtype=torch.long)
                index = (index if rows is None else index[rows]).repeat(views)
            conv = self.conv
            weight = conv.weight[index.to(conv.weight.device)]
            bias = conv.bias[index.to(conv.weight.device)] if conv.bias is not None else None
            out = F.conv2d(
                inp.reshape(1, n * c, h, w),
                weight,
                bias,
                conv.stride,
                conv.padding,
                conv.dilation,
                groups=n,
            )
            out = out.reshape(n, 1, *out.shape[2:])
            for layer in self.after:  # per-channel layers between the conv and the target
                out = _per_channel(layer, out, index.to(out.device))
            return {name: out}
        if not self.output:
            return forward_to(self.module, x, self.names)
        with capture(self.module, self.names) as acts:
            out = self.module(x)
            result = {name: acts[name] for name in self.names}
        result[OUTPUT] = out if isinstance(out, torch.Tensor) else out[0]
        return result


def _autocast(settings: RenderSettings, device: torch.device):
    if settings.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def probe_shapes(model: Model, objective: Objective, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (batch dropped) of each layer the objective needs, for input ``x``."""
    forward = _Forward(model, objective)
    with torch.no_grad():
        acts = forward(x[:1])
    return {name: tuple(value.shape[1:]) for name, value in acts.items()}


def render(
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
    """Optimize ``batch`` images so that row i maximizes row i of ``objective``.

    ``seeds`` (one per row, default 0..N-1) seed each row's start and transforms, so a row
    renders the same whatever the rest of the batch. Everything is checked (layers, channel
    and class indices, settings) before the first step. ``snapshots`` lists steps whose
    images are kept as well.
    """
    settings = settings or settings_for("robust")
    validate_settings(settings)
    seeds = list(range(batch)) if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise ConvsightError(f"{len(seeds)} seeds for {batch} rows")
    device = model.device
    full = objective
    extra = penalties(settings)
    if extra is not None:
        full = objective - extra
    forward = _Forward(model, full, settings.slice_channels)  # unknown layers fail here
    generators = row_generators(seeds)
    param = make_param(model, settings, generators, init_pixels)
    with torch.no_grad():
        start = param.model_input(model)
    full.check(probe_shapes(model, full, start), batch)  # bad channel/class fails here

    terms = full.terms()
    transforms = Compose(make_transforms(settings))
    crop = _crop_for_fixed_size(model, full, start, settings.pad)
    if settings.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(param.params, lr=settings.lr)
    else:
        optimizer = torch.optim.SGD(param.params, lr=settings.lr)
    schedule = None
    if settings.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.steps, eta_min=settings.lr * 0.05
        )
    module = model.module
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    converted = settings.channels_last and device.type == "cpu"
    if converted:
        module.to(memory_format=torch.channels_last)
    alive = torch.zeros(batch, dtype=torch.bool)
    dead = torch.zeros(batch, dtype=torch.bool)
    trace = torch.zeros(settings.steps, batch)
    kept: dict[int, torch.Tensor] = {}
    chunk = (
        batch
        if full.coupled
        else settings.chunk or _auto_chunk(device, batch, image_size(model, settings))
    )
    chunks = [slice(i, min(i + chunk, batch)) for i in range(0, batch, chunk)]
    rows = torch.arange(batch)
    start_params = [p.detach().clone() for p in param.params]
    averaged = [p.detach().clone() for p in param.params] if settings.average else []
    hooks: list[GhostNoise | BatchNormPrior | SkipGradient] = []
    began = time.perf_counter()
    try:
        # a model without the layers these need fails here, before any step
        ghost = GhostNoise(module, settings.ghost)
        hooks.append(ghost)
        prior = BatchNormPrior(module, settings.bn_prior)
        hooks.append(prior)
        skip = SkipGradient(module, settings.skip_gradient)
        hooks.append(skip)
        with progress_bar(progress) as bar:
            task = bar.add_task(description, total=settings.steps, status="")
            for step in range(settings.steps):
                optimizer.zero_grad(set_to_none=True)
                if settings.coarse_to_fine:  # fourier only (validated)
                    rise = (step + 1) / (settings.coarse_to_fine * settings.steps)
                    param.band = min(1.0, 0.125 + 0.875 * rise)
                main = torch.zeros(batch)
                for part in chunks:
                    pixels = param.pixels(part)
                    untransformed = param.model_input(model, pixels, part)
                    part_rng = RowRandom(generators[part], settings.views)
                    if transforms.transforms or settings.views > 1:
                        x = model.normalize(_center_crop(transforms(pixels, part_rng), crop))
                    else:
                        x = untransformed
                    x = x.contiguous(memory_format=memory_format)
                    ghost.rng, prior.active = part_rng, True
                    with _autocast(settings, device):
                        acts = forward(x, rows[part], settings.views)
                    ghost.rng, prior.active = None, False
                    acts = {k: v.float() for k, v in acts.items()}
                    ctx = Context(
                        acts, pixels, untransformed, settings.views, rows[part], forward.sliced
                    )
                    total = 0
                    for weight, term in terms:
                        value = term(ctx)
                        total = total + weight * value
                        if not term.penalty:
                            main[part] += weight * value.detach().cpu()
                    if prior.handles:
                        total = total - settings.bn_prior * prior.take(settings.views)
                    trace[step, part] = total.detach().cpu()
                    (-total.sum()).backward()
                if step < settings.dead_steps and any(not t.penalty for _, t in terms):
                    alive |= main != 0
                    if step == min(settings.dead_steps, settings.steps) - 1:
                        dead = ~alive
                _mask_and_normalize(param, settings, dead)
                optimizer.step()
                if dead.any():  # dead rows are skipped: they keep their start image
                    with torch.no_grad():
                        for p, p0 in zip(param.params, start_params, strict=True):
                            p[dead.to(p.device)] = p0[dead.to(p.device)]
                if averaged:
                    with torch.no_grad():
                        for avg, p in zip(averaged, param.params, strict=True):
                            avg.lerp_(p, 1 - settings.average)
                if schedule is not None:
                    schedule.step()
                if settings.blur_every and (step + 1) % settings.blur_every == 0:
                    with torch.no_grad():
                        for p in param.params:
                            keep = p[dead].clone()
                            p.copy_(gaussian_blur(p, settings.blur_sigma))
                            p[dead] = keep
                if step + 1 in snapshots:
                    with torch.no_grad():
                        kept[step + 1] = param.pixels().detach().clamp(0, 1).cpu()
                if callback is not None:
                    callback(step, trace[step])
                bar.update(task, advance=1, status=f"objective {float(main.mean()):.3g}")
        values = torch.zeros(batch)
        images = torch.zeros(0)
        with torch.no_grad():
            if averaged:  # the final image is the moving average
                for avg, p in zip(averaged, param.params, strict=True):
                    p.copy_(avg)
            images = param.pixels().detach()
            for part in chunks:
                inp = param.model_input(model, images[part], part)
                acts = forward(inp.contiguous(memory_format=memory_format), rows[part])
                ctx = Context(acts, images[part], inp, 1, rows[part], forward.sliced)
                values[part] = full(ctx).detach().cpu()
    finally:
        for hook in hooks:
            hook.close()
        if converted:
            module.to(memory_format=torch.contiguous_format)
    return RenderResult(
        images=images.clamp(0, 1).cpu(),
        values=values,
        dead=[int(i) for i in dead.nonzero()],
        settings=settings.to_dict(),
        seconds=time.perf_counter() - began,
        description="; ".join(filter(None, [full.description, skip.describe()])),
        trace=trace,
        snapshots=kept,
    )


def _auto_chunk(device: torch.device, batch: int, size: tuple[int, int]) -> int:
    """Rows per pass: the whole batch on a GPU; on a CPU about 64x64x4 pixels a pass.

    Measured on 2 cores (VGG16, MobileNet v2 at 224): one row a pass is fastest per row;
    a batch of 16 is 1.5-5x slower per row (activations fall out of cache).
    """
    if device.type != "cpu":
        return batch
    return max(1, min(batch, (64 * 64 * 4) // (size[0] * size[1])))


def _mask_and_normalize(param: ImageParam, settings: RenderSettings, dead: torch.Tensor) -> None:
    """Dead rows take no step; plain ascent may step along the RMS-normalized gradient."""
    for p in param.params:
        if p.grad is None:
            continue
        if dead.any():
            p.grad[dead.to(p.device)] = 0
        if settings.optimizer == "ascent" and settings.normalize_grad:
            rms = p.grad.flatten(1).pow(2).mean(1).sqrt()
            p.grad.div_((rms + 1e-8).view(-1, *[1] * (p.grad.dim() - 1)))


# Without the layer's channel count, channel numbers stop here (a parsed list stays small).
MAX_CHANNELS = 65_536
_CHANNEL_PART = re.compile(r"(-?[0-9]+)(?:\s*-\s*(-?[0-9]+))?")


def parse_channels(text: str, limit: int | None = None) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]. ``limit``: the layer's channel count (else ``MAX_CHANNELS``).

    Every part is checked against the bound (and for overlaps) before the list is built, so
    a huge range is refused at once; a reversed range, a negative number, a channel given
    twice, garbage or nothing at all is refused with one sentence.
    """
    bound = MAX_CHANNELS if limit is None else int(limit)
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConvsightError("no channels given: use numbers and ranges like 0-15,32")
    ranges: list[tuple[int, int]] = []
    for part in parts:
        match = _CHANNEL_PART.fullmatch(part)
        if match is None:
            at = f" (at '{part}')" if part != str(text).strip() else ""
            raise ConvsightError(
                f"cannot read channels '{text}'{at}: use numbers and ranges like 0-15,32"
            )
        lo = int(match[1])
        hi = lo if match[2] is None else int(match[2])
        if min(lo, hi) < 0:
            raise ConvsightError(f"channel {min(lo, hi)} is negative: channels count from 0")
        if hi < lo:
            raise ConvsightError(f"reversed range {lo}-{hi} (did you mean {hi}-{lo}?)")
        if hi >= bound:
            if limit is None:
                raise ConvsightError(
                    f"channel {hi} is out of range: channel numbers go up to {bound - 1}"
                )
            raise ConvsightError(
                f"channel {hi} is out of range: the layer has {bound} channels (0-{bound - 1})"
            )
        ranges.append((lo, hi))
    ordered = sorted(ranges)
    for (_, prev_hi), (lo, _) in zip(ordered, ordered[1:], strict=False):
        if lo <= prev_hi:
            raise ConvsightError(f"channel {lo} is given twice in '{text}'")
    # Disjoint ranges inside [0, bound): the list has at most ``bound`` entries.
    return [c for lo, hi in ranges for c in range(lo, hi + 1)]


def channel_seeds(seed: int, channels: Sequence[int]) -> list[int]:
    """Per-row seeds from (seed, channel): a channel renders the same in any batch."""
    return [seed * 1_000_003 + int(c) for c in channels]


def render_channels(
    model: Model,
    layer: str,
    channels: Sequence[int],
    preset: str = "robust",
    seed: int = 0,
    progress: bool = False,
    init_pixels: torch.Tensor | None = None,
    **overrides: Any,
) -> RenderResult:
    """One image per channel of ``layer`` (one batch row each) maximizing its mean activation.

    Row seeds come from (seed, channel), so channel c looks the same rendered alone or in a
    batch (to float tolerance).
    """
    settings = settings_for(preset, **overrides)
    channels = [int(c) for c in channels]
    if not channels:
        raise ConvsightError("no channels given")
    check_layers(model.module, [layer])
    return render(
        model,
        obj.channel(layer, channels),
        len(channels),
        settings,
        seeds=channel_seeds(seed, channels),
        init_pixels=init_pixels,
        progress=progress,
        description=f"{layer}: {len(channels)} channels",
    )


def class_objective(
    model: Model, classes: Sequence[int], kind: str = "logit", power: float = 2.0
) -> Objective:
    labels = ", ".join(model.card.label(c) for c in classes[:4])
    if len(classes) > 4:
        labels += f", ... ({len(classes)})"
    makers = {
        "logit": obj.class_logit,
        "margin": obj.class_margin,
        "logsoftmax": obj.class_log_softmax,
    }
    if kind == "cossim":
        found = _penultimate(model)
        if found is not None:
            layer, head = found
            weight = head.weight.detach().float().cpu()
            vectors = (weight - weight.mean(0))[list(classes)]
            return obj.direction_cossim(layer, vectors, power, label=labels)
        kind = "margin"  # no nn.Linear head to read class directions from (e.g. TorchScript)
    maker = makers[kind]
    return maker(list(classes), label=labels)


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


def render_classes(
    model: Model,
    classes: Sequence[int | str],
    preset: str = "robust",
    seed: int = 0,
    init_pixels: torch.Tensor | None = None,
    progress: bool = False,
    snapshots: Sequence[int] = (),
    **overrides: Any,
) -> RenderResult:
    """One image per class (names or indices) maximizing its score before softmax.

    ``init_pixels`` (N x C x H x W, pixel space) starts from given images, e.g. the class
    means of :func:`convsight.optvis.means.class_mean_images`.
    """
    settings = settings_for(preset, target="class", **overrides)
    indices = [model.class_index(c) for c in classes]
    if not indices:
        raise ConvsightError("no classes given")
    return render(
        model,
        class_objective(model, indices, settings.class_objective, settings.cossim_power),
        len(indices),
        settings,
        seeds=channel_seeds(seed, indices),
        init_pixels=init_pixels,
        progress=progress,
        description=f"{len(indices)} classes",
        snapshots=snapshots,
    )
