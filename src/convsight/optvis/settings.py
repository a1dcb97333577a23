"""The serialized form of a render recipe: :class:`RenderSettings`, the presets as sets of
defaults for it, and its validation. ``--set KEY=VALUE``, JSON summaries and the command line
read and write this; :mod:`convsight.optvis.recipes` turns it into built objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from convsight.errors import ConvsightError
from convsight.models.card_validation import finite_float32
from convsight.optvis.objectives import ClassScore

# The names a setting may take, defined once (validation, the fields' types and the command
# line's help read these).
Param = Literal["pixel", "fourier", "maco"]
Optimizer = Literal["ascent", "adam"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]
PARAMS: tuple[str, ...] = get_args(Param)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
CLASS_OBJECTIVES: tuple[str, ...] = (*get_args(ClassScore), "cossim")


def knob(default: Any, help: str) -> Any:
    """A field of :class:`RenderSettings` with its help text, the one place it is written
    (the command line's flags and ``--set`` read it through :func:`setting_help`)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RenderSettings:
    """Every knob of a render recipe, serialized (``--set KEY=VALUE``, JSON summaries). A
    preset is a set of defaults for these; :func:`convsight.optvis.recipes.build` turns
    them into the objects :func:`convsight.optvis.render.render` takes."""

    preset: str = knob("custom", "The preset these settings started from.")
    steps: int = knob(256, "Optimization steps.")
    size: int | None = knob(None, "Image side (default: the model's).")
    # what is optimized
    param: str = knob(
        "fourier",
        "pixel (the model's input pixels, the study), fourier (a Fourier spectrum) or maco "
        "(its phase only: fixed 1/f^decay magnitude spectrum and contrast).",
    )
    decorrelate: bool = knob(True, "Decorrelated colour.")
    init_std: float = knob(
        0.01, "Std of the random start (input space for pixel, spectrum for fourier)."
    )
    decay_power: float = knob(1.0, "Fourier: the power of the 1/f scaling of the spectrum.")
    coarse_to_fine: float = knob(
        0.0,
        "Fourier: over this fraction of the steps the highest frequency the image may hold "
        "rises linearly from 1/8 of the band to all of it (0: all from the start).",
    )
    coarse_steps: float = knob(
        0.0,
        "Fourier: this fraction of the steps draws the image small, from its low frequencies "
        "(a quarter of the side, then half; each a quarter of a step's cost or less), the rest "
        "at full size (0: all at full size).",
    )
    stop_when_flat: int = knob(
        0,
        "Stop once no row's objective has risen by more than 1% over this many steps "
        "(0: always run every step).",
    )
    # how
    optimizer: str = knob("adam", "ascent (plain gradient ascent) or adam.")
    lr: float = knob(0.05, "Step size (ascent) or Adam learning rate.")
    normalize_grad: bool = knob(
        False, "Ascent: step along grad / RMS(grad) per row (Chollet's recipe)."
    )
    lr_schedule: str = knob("constant", "constant or cosine.")
    # transforms (all pixel space); 0 / empty switches one off
    pad: int = knob(12, "Pixels of padding before the transforms.")
    jitter: int = knob(8, "Random shift (pixels) before scaling and rotating.")
    scales: tuple[float, ...] = knob(
        tuple(1 + (i - 5) / 50 for i in range(11)), "Random zoom factors, one drawn per view."
    )
    angles: tuple[float, ...] = knob(
        tuple(list(range(-10, 11)) + 5 * [0]), "Random rotations (degrees), one drawn per view."
    )
    jitter_after: int = knob(4, "Random shift (pixels) after scaling and rotating.")
    flip: bool = knob(False, "Mirror each view left-right with probability 1/2.")
    noise: float = knob(0.0, "Std of Gaussian pixel noise added to each transformed view.")
    color_shift: float = knob(
        0.0, "Random colour cast per view and channel: contrast x e^U(-a, a), offset U(-a, a) / 4."
    )
    views: int = knob(1, "Augmented views per step (gradient averaged).")
    blur_every: int = knob(0, "Pixel param: blur the image every k steps (0: never).")
    blur_sigma: float = knob(0.5, "Pixel param: the blur's sigma.")
    # penalties (subtracted, weight x measure)
    l1: float = knob(0.0, "L1 penalty weight.")
    l2: float = knob(0.0, "L2 penalty weight.")
    tv: float = knob(0.0, "Total-variation penalty weight.")
    blur: float = knob(0.0, "Blur penalty weight (distance to the blurred image).")
    activation_penalty: float = knob(0.0, "Weight of the activation penalty on penalty_layers.")
    penalty_layers: tuple[str, ...] = knob((), "Layers whose activations are penalized.")
    class_objective: str = knob(
        "logit",
        "logit (score before softmax, the study), margin (logit - mean logit), logsoftmax "
        "(log-probability) or cossim (features before the last dense layer: dot x "
        "max(cos, 0.1)^power with the class's weights minus the mean weights; margin for a "
        "model without an nn.Linear head).",
    )
    cossim_power: float = knob(2.0, "cossim: the power of the cosine.")
    dead_steps: int = knob(3, "A row whose objective is exactly 0 for these first steps is dead.")
    precision: str = knob("fp32", "fp32 or bf16 (CPU/CUDA autocast).")
    channels_last: bool = knob(True, "CPU: run the model in channels-last memory format.")
    chunk: int = knob(0, "Rows per forward/backward pass (0: auto; rows are independent).")
    ghost: float = knob(
        0.0,
        "Each step multiplies every channel of every conv layer's output by 1 + N(0, ghost^2): "
        "a slightly different network each step (ghost networks).",
    )
    bn_prior: float = knob(
        0.0,
        "Minus this weight x how far each batch norm layer's input statistics (per row and "
        "channel) are from the layer's running statistics.",
    )
    skip_gradient: float = knob(
        1.0, "Gradient through every residual branch times this (skip gradient method; 1: off)."
    )
    average: float = knob(
        0.0, "EMA decay of the parameters; the final image is the average (0: off)."
    )
    slice_channels: bool = knob(
        True, "Channel objective on a conv: compute only the row's channel."
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def setting_help(name: str) -> str:
    """The help text of the render setting ``name``."""
    return RenderSettings.__dataclass_fields__[name].metadata["help"]


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
    # What the field learned since: the RenderSettings defaults (256 steps, Fourier +
    # decorrelated colour from a 0.01 start, Lucid's transforms, Adam at 0.05).
    "robust": {},
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


def _check_finite(s: RenderSettings) -> None:
    """Every number of ``s`` finite in 32-bit floating point (what the render computes in)."""
    for key, value in s.to_dict().items():
        numbers = value if isinstance(value, (tuple, list)) else (value,)
        for number in numbers:
            if isinstance(number, float) and not finite_float32(number):
                raise ConvsightError(
                    f"{key.replace('_', '-')} must be a finite number, not {number}"
                )


def validate_settings(s: RenderSettings) -> None:
    """Bad values fail here, before any work."""
    _check_finite(s)
    checks = [
        (s.steps >= 1, f"steps must be at least 1, not {s.steps}"),
        (s.size is None or s.size >= 8, f"size must be at least 8 pixels, not {s.size}"),
        (s.param in PARAMS, f"unknown parameterization '{s.param}'"),
        (s.optimizer in OPTIMIZERS, f"unknown optimizer '{s.optimizer}'"),
        (s.lr > 0, f"learning rate must be positive, not {s.lr}"),
        (s.lr_schedule in SCHEDULES, f"unknown schedule '{s.lr_schedule}'"),
        (s.views >= 1, f"views must be at least 1, not {s.views}"),
        (s.chunk >= 0, f"chunk must be >= 0, not {s.chunk}"),
        (s.precision in PRECISIONS, f"unknown precision '{s.precision}'"),
        (
            s.class_objective in CLASS_OBJECTIVES,
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
        (s.stop_when_flat >= 0, f"stop-when-flat must be >= 0, not {s.stop_when_flat}"),
        (0 <= s.coarse_steps < 1, f"coarse-steps must be in [0, 1), not {s.coarse_steps}"),
        (
            s.coarse_steps == 0 or s.param != "pixel",
            "coarse-steps works on the fourier and maco parameterizations only",
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


# The cheap way to render channels (the atlas's default; benchmarks/atlas_cost.py measures
# its cost and reach against the full settings over VGG16's conv stack): the passes in
# bfloat16 where the device runs that natively (half the time, the same reach), and the render
# stopped once its objective is flat. Weighed and dropped, as they lowered the reach: coarse
# steps (coarse_steps=0.5: a quarter to a third of the reach of deep layers lost; a unit is
# not scale invariant, so what a small image taught it is the wrong size at full size), half
# the steps at twice the learning rate; channel batches larger than 4 were no faster per
# channel on one CPU thread.
CHEAP_CHANNELS: dict[str, Any] = dict(precision="bf16", stop_when_flat=16)


def cheap_settings(settings: RenderSettings, bf16_native: bool) -> tuple[RenderSettings, str]:
    """``settings`` with :data:`CHEAP_CHANNELS` where they apply (bf16 needs a device that runs
    it natively, ``bf16_native``), and a note of what was left as it was and why (empty when
    everything applied)."""
    cheap, notes = dict(CHEAP_CHANNELS), []
    if not bf16_native:
        cheap.pop("precision")
        notes.append("fp32, not bf16: this device has no native bfloat16 convolutions")
    return dataclasses.replace(settings, **cheap), "; ".join(notes)


def parse_setting(text: str) -> tuple[str, Any]:
    """'views=4' / 'scales=0.8,1,1.2' / 'decorrelate=false' -> typed (key, value)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(RenderSettings)}
    if not sep or key not in fields:
        names = ", ".join(sorted(set(fields) - {"preset"}))
        raise ConvsightError(f"--set takes KEY=VALUE with KEY one of: {names}; got '{text}'")
    default = getattr(RenderSettings(), key)
    raw = raw.strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            items = [v for v in raw.split(",") if v.strip()]
            cast = str if key == "penalty_layers" else float
            return key, tuple(cast(v.strip()) for v in items)
        if isinstance(default, int) and key != "size":
            return key, int(raw)
        if key == "size":
            return key, None if raw.lower() == "none" else int(raw)
        if isinstance(default, float):
            return key, float(raw)
        return key, raw
    except ValueError:
        raise ConvsightError(f"cannot read setting '{text}'") from None
