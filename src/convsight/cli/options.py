"""Options the commands share, declared once; lists in the help come from the registries.

An option group (:func:`option_group`) gives a command a set of flags and hands it what they
say as one value: the card flags become ``card_fields`` (a dict of card fields), the render
knobs of ``maximize`` / ``classviz`` become ``render`` (:class:`RenderFlags`), and every
command's ``--out`` / ``--seed`` (/ ``--device`` / ``--quiet``) become ``run`` (:class:`RunFlags`).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from convsight.attribution import METHODS
from convsight.attribution.lrp import COMPOSITES
from convsight.engines import AUTO, ENGINE_CHOICES
from convsight.models.sources import ARCH_HELP
from convsight.optvis.settings import (
    PRESETS,
    RenderSettings,
    parse_setting,
    setting_help,
    settings_for,
)
from convsight.runtime import MAX_SEED
from convsight.studies.attribution import DEFAULT_METHODS, METRICS

F = TypeVar("F", bound=Callable[..., Any])


def one_of(names: Sequence[str]) -> str:
    """'a, b or c': the names a flag takes, for its help."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def split_list(value: str | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# -- single options ------------------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="Model name or checkpoint path.")]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="Local state dict; its card (.json) beside it.")
]
OutOpt = Annotated[str, typer.Option("--out", help="Output folder (new, empty or convsight's).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Write into an --out folder that holds other files.")
]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Random seed.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="CONVSIGHT_DATA",
        help="Offline data folder (MNIST idx files, ...). Env: CONVSIGHT_DATA.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
MetricsOpt = Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METRICS)}.")]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        help="Run a request that looks absurd: more than 100000 steps, or an atlas plan over 24 h.",
    ),
]


# -- groups --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """One flag of a group: its option type and default."""

    option: Any  # an Annotated[type, typer.Option(...)]
    default: Any = None


def _option_without(option: Any, taken: set[str]) -> Any:
    """``option`` (an Annotated option type) without the flag names a command uses itself."""
    info = copy.copy(option.__metadata__[0])
    info.param_decls = tuple(d for d in info.param_decls if d.lstrip("-") not in taken)
    return Annotated[option.__origin__, info]


def option_group(flags: dict[str, Flag], collect: Callable[..., Any], name: str):
    """A decorator that adds ``flags`` to a command (after its own parameters) and passes it
    ``collect(**what they say)`` as the keyword ``name``. A flag name the command already
    takes is dropped from the group's option (``--channels`` of the card flags)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != name]
        taken = {p.name for p in own}
        added = [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=flag.default,
                annotation=_option_without(flag.option, taken),
            )
            for key, flag in flags.items()
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {key: kwargs.pop(key, flag.default) for key, flag in flags.items()}
            return fn(*args, **{name: collect(**given)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# Card fields from the command line: a model without a card, or changes to its card's.
CARD_FLAGS = {
    "input_size": Flag(
        Annotated[
            str | None,
            typer.Option(help="Input size HEIGHTxWIDTH in pixels (e.g. 64x128), or one side."),
        ]
    ),
    "input_channels": Flag(
        Annotated[
            int | None,
            typer.Option(
                "--input-channels",
                "--channels",
                min=1,
                max=4,
                help="Input channels: 1 grey, 3 RGB.",
            ),
        ]
    ),
    "mean": Flag(
        Annotated[
            str | None,
            typer.Option(help="Normalization mean: one number, or one per channel (0.485,...)."),
        ]
    ),
    "std": Flag(
        Annotated[
            str | None,
            typer.Option(help="Normalization std: one number, or one per channel (0.229,...)."),
        ]
    ),
    "labels": Flag(
        Annotated[
            str | None,
            typer.Option(help="Class names: a file (one per line, or a JSON list), or 'imagenet'."),
        ]
    ),
    "num_classes": Flag(
        Annotated[
            int | None, typer.Option(min=1, help="Number of classes (default: the weights' head).")
        ]
    ),
    "arch": Flag(
        Annotated[
            str | None,
            typer.Option(
                help="Architecture of a checkpoint without a card (or instead of its card's): "
                f"{ARCH_HELP} (its code is run)."
            ),
        ]
    ),
    "arch_args": Flag(
        Annotated[
            str | None,
            typer.Option(
                help="Constructor keywords of that class, a JSON object: '{\"classes\": 5}'."
            ),
        ]
    ),
    "resize": Flag(
        Annotated[
            str | None,
            typer.Option(
                metavar="N|auto|none",
                help="Shorter side photos are resized to before the centre crop; none: images "
                "of exactly the input size only (default auto: 256/224 of the input side, the "
                "side itself below 64 pixels).",
            ),
        ]
    ),
    "output": Flag(
        Annotated[
            str | None,
            typer.Option(
                metavar="INDEX|KEY",
                help="The part of a model's output that holds the scores, when it returns a "
                "tuple, dict or object: an index (0) or a key (logits).",
            ),
        ]
    ),
}


def card_fields(
    input_size: str | None = None,
    input_channels: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    labels: str | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    arch_args: str | None = None,
    resize: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """The card fields (``ModelCard.updated`` names) that the card flags given say, and the
    architecture (``arch``, ``arch_options``) of a checkpoint given as the model."""
    from convsight.models.card import parse_input_size, parse_numbers, parse_resize, read_labels
    from convsight.models.outputs import parse_output

    fields: dict[str, Any] = {}
    if input_size is not None:
        fields["input_size"] = parse_input_size(input_size)
    if input_channels is not None:
        fields["channels"] = input_channels
    if mean is not None:
        fields["mean"] = parse_numbers(mean, "--mean")
    if std is not None:
        fields["std"] = parse_numbers(std, "--std")
    if labels is not None:
        fields["labels"] = read_labels(labels)
    if num_classes is not None:
        fields["num_classes"] = num_classes
    if arch is not None:
        fields["arch"] = arch
    if arch_args is not None:
        from convsight.models.python_class import parse_arch_args

        fields["arch_options"] = parse_arch_args(arch_args)
    if resize is not None:
        fields["resize"] = parse_resize(resize)
    if output is not None:
        fields["output"] = parse_output(output)
    return fields


card_options = option_group(CARD_FLAGS, card_fields, "card_fields")


@dataclass(frozen=True)
class RenderFlags:
    """What the render flags of a command said: the preset, the knobs given (None: the
    preset's value, left out) and the ``--set KEY=VALUE`` pairs."""

    preset: str = "robust"
    flags: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)

    def arguments(self) -> dict[str, Any]:
        """As keyword arguments: ``preset``, ``flags``, ``extra`` (the ``--set`` pairs)."""
        return {"preset": self.preset, "flags": self.flags, "extra": self.extra}

    def settings(self, target: str = "channel") -> tuple[RenderSettings, frozenset[str]]:
        """The render settings they say for ``target`` (channel or class) and the names of
        the settings the user chose (see :func:`collect_settings`)."""
        return collect_settings(self.preset, self.flags, self.extra, target)


def collect_settings(
    preset: str, flags: dict[str, Any], extra: Sequence[str], target: str = "channel"
) -> tuple[RenderSettings, frozenset[str]]:
    """Preset defaults, then ``--set`` pairs, then the dedicated flags given; and the names of
    the settings the user gave."""
    overrides = dict(parse_setting(text) for text in extra)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return settings_for(preset, target, **overrides), frozenset(overrides)


def render_flags(
    preset: str = "robust", set_: list[str] | None = None, **knobs: Any
) -> RenderFlags:
    """The :class:`RenderFlags` of what the render flags say."""
    given = {k: v for k, v in knobs.items() if v is not None}
    return RenderFlags(preset, given, list(set_ or []))


RENDER_FLAGS = {
    "preset": Flag(
        Annotated[
            str,
            typer.Option(help=f"{one_of(list(PRESETS))}: paper is the study, robust Lucid-style."),
        ],
        "robust",
    ),
    "steps": Flag(Annotated[int | None, typer.Option(min=1, help=setting_help("steps"))]),
    "size": Flag(Annotated[int | None, typer.Option(min=8, help=setting_help("size"))]),
    "lr": Flag(Annotated[float | None, typer.Option(help=setting_help("lr"))]),
    "optimizer": Flag(Annotated[str | None, typer.Option(help=setting_help("optimizer"))]),
    "param": Flag(
        Annotated[
            str | None,
            typer.Option(help=setting_help("param")),
        ]
    ),
    "decorrelate": Flag(
        Annotated[
            bool | None,
            typer.Option("--decorrelate/--no-decorrelate", help=setting_help("decorrelate")),
        ]
    ),
    "views": Flag(Annotated[int | None, typer.Option(min=1, help=setting_help("views"))]),
    "l1": Flag(Annotated[float | None, typer.Option(min=0.0, help=setting_help("l1"))]),
    "tv": Flag(Annotated[float | None, typer.Option(min=0.0, help=setting_help("tv"))]),
    "precision": Flag(Annotated[str | None, typer.Option(help=setting_help("precision"))]),
    "set_": Flag(
        Annotated[
            list[str] | None,
            typer.Option("--set", help="Any other render setting, KEY=VALUE (e.g. jitter=16)."),
        ]
    ),
}
render_options = option_group(RENDER_FLAGS, render_flags, "render")


def method_flags(
    methods: str,
    layer: str | None = None,
    batch_size: int | None = None,
    engine: str = AUTO,
    composite: str | None = None,
) -> dict[str, Any]:
    """What the attribution flags say, as keyword arguments of the attribution studies."""
    return {
        "methods": split_list(methods),
        "layer": layer,
        "batch_size": batch_size,
        "engine": engine,
        "composite": composite,
    }


METHOD_FLAGS = {
    "methods": Flag(
        Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METHODS)}.")],
        ",".join(DEFAULT_METHODS),
    ),
    "layer": Flag(
        Annotated[
            str | None,
            typer.Option("--layer", help="CAM layer (default: the last stage's output)."),
        ]
    ),
    "batch_size": Flag(
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Rows per pass in batched work (default: each method's own: IG 32 path "
                "points, SmoothGrad 64 noisy copies, occlusion 16 windows, Score-CAM 4 masks "
                "on a CPU; deletion / insertion 16).",
            ),
        ]
    ),
    "engine": Flag(
        Annotated[
            str,
            typer.Option(
                help=f"{one_of(ENGINE_CHOICES)}: auto is incremental inference for occlusion, else "
                "eager; frozen is a traced copy (faster Score-CAM / deletion / insertion)."
            ),
        ],
        AUTO,
    ),
    "composite": Flag(
        Annotated[
            str | None,
            typer.Option(
                help=f"{one_of(COMPOSITES)}: zennit's rules for --methods lrp "
                "(default: epsilon_plus_flat)."
            ),
        ]
    ),
}
method_options = option_group(METHOD_FLAGS, method_flags, "attribution")


@dataclass(frozen=True)
class RunFlags:
    """Where a command writes, its seed, and (for commands that take them) its device and
    whether it shows progress bars; None: the command has no such flag."""

    out: Path
    seed: int = 0
    device: str | None = None
    quiet: bool | None = None

    @classmethod
    def checked(cls, out: str, force: bool = False, **flags: Any) -> RunFlags:
        """What the flags say, ``--out`` checked first (:func:`check_out_dir`): before any
        work, a folder of the user's is not written into without ``--force``."""
        from convsight.report.files import check_out_dir

        return cls(check_out_dir(out, force), **flags)

    def arguments(self) -> dict[str, Any]:
        """As keyword arguments of a study: ``out``, ``seed``, ``device``, ``show_progress``."""
        given = {"out": self.out, "seed": self.seed, "device": self.device}
        if self.quiet is not None:
            given["show_progress"] = not self.quiet
        return {key: value for key, value in given.items() if value is not None}


def run_options(out: str | None, device: bool = False, quiet: bool = True):
    """The ``--out`` (default ``out``; None: required), ``--force``, ``--seed`` and, when asked for,
    ``--device`` and ``--quiet`` flags, handed to the command as ``run``."""
    flags = {
        "out": Flag(OutOpt, inspect.Parameter.empty if out is None else out),
        "force": Flag(ForceOpt, False),
        "seed": Flag(SeedOpt, 0),
    }
    if device:
        flags["device"] = Flag(DeviceOpt, "auto")
    if quiet:
        flags["quiet"] = Flag(QuietOpt, False)
    return option_group(flags, RunFlags.checked, "run")
