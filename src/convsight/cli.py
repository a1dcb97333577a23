"""The ``convsight`` command line: parse, call the library, write outputs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from convsight.errors import ConvsightError

if TYPE_CHECKING:
    from convsight.models import Model

out_console = Console()
err_console = Console(stderr=True)


def say(kind: str, style: str, message: str) -> None:
    """One line on stderr: ``kind`` in colour, then ``message`` as plain text (no markup)."""
    text = Text.assemble((kind, style), " ", " ".join(str(message).split()))
    err_console.print(text, highlight=False, soft_wrap=True)


# Click's error base class, whether typer uses click or its own copy of it (typer >= 0.2x).
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def usage_sentence(exc: Any) -> str:
    """A click usage error as one sentence, pointing at the command's --help."""
    if getattr(exc, "possibilities", None):  # an unknown option with near names
        guesses = ", ".join(sorted(exc.possibilities))
        message = f"{exc.message.rstrip('.')} (did you mean {guesses}?)"
    else:
        message = exc.format_message()
    message = " ".join(message.split()).rstrip(".").replace(". Did you mean", " (did you mean")
    if "(did you mean" in message and not message.endswith(")"):
        message += ")"
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f"; see '{ctx.command_path} --help'"
    return message


class OneLineErrors(TyperGroup):
    """The root command: a usage error (missing or unknown option, bad value) is one line on
    stderr and exit 2, instead of click's usage box."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # else the help is already printed
                say("error:", "red", usage_sentence(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            err_console.print("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="See how convolutional networks see: activations, visualizations, attributions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train a model (Adam, cross-entropy) and write checkpoint + card.")
app.add_typer(train_app, name="train")
data_app = typer.Typer(help="Build datasets: reproducible train/test subsets of image folders.")
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable[..., Any])

# Options shared by many commands.
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="Local state dict; its card (.json) beside it.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
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


@contextlib.contextmanager
def card_warnings_on_stderr() -> Iterator[None]:
    """Show each card warning (no mean/std...) as one line on stderr while inside."""
    from convsight.models import CardWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *rest: Any, **named: Any) -> None:
            if issubclass(category, CardWarning):
                say("warning:", "yellow", str(message))
            else:
                shown(message, category, *rest, **named)

        warnings.showwarning = show
        warnings.simplefilter("always", CardWarning)
        yield


def command(fn: F) -> F:
    """Turn bad input into one sentence and exit 2, other failures into one line and exit 1;
    a card warning is one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with card_warnings_on_stderr():
                return fn(*args, **kwargs)
        except ConvsightError as exc:
            say("error:", "red", str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:  # a failure, not bad input
            say("failed:", "red", f"{type(exc).__name__}: {exc}")
            if os.environ.get("CONVSIGHT_DEBUG"):
                raise
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def split_list(value: str | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# Card fields from the command line: a model without a card, or changes to its card's.
InputSizeOpt = Annotated[
    str | None,
    typer.Option(help="Input size HEIGHTxWIDTH in pixels (e.g. 64x128), or one side (224)."),
]
InputChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--input-channels", "--channels", min=1, max=4, help="Input channels: 1 grey, 3 RGB."
    ),
]
MeanOpt = Annotated[
    str | None,
    typer.Option(help="Normalization mean: one number, or one per channel (0.485,0.456,0.406)."),
]
StdOpt = Annotated[
    str | None,
    typer.Option(help="Normalization std: one number, or one per channel (0.229,0.224,0.225)."),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(help="Class names: a file (one per line, or a JSON list), or 'imagenet'."),
]
NumClassesOpt = Annotated[
    int | None, typer.Option(min=1, help="Number of classes (default: the weights' head).")
]
CARD_OPTIONS: dict[str, Any] = {
    "input_size": InputSizeOpt,
    "input_channels": InputChannelsOpt,
    "mean": MeanOpt,
    "std": StdOpt,
    "labels": LabelsOpt,
    "num_classes": NumClassesOpt,
}


def card_fields(
    input_size: str | None = None,
    input_channels: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    labels: str | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The card fields (``ModelCard.updated`` names) that the card flags given say."""
    from convsight.models.card import parse_input_size, parse_numbers, read_labels

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
    return fields


def _option_without(option: Any, taken: set[str]) -> Any:
    """``option`` (an Annotated option type) without the flag names a command uses itself."""
    import copy

    info = copy.copy(option.__metadata__[0])
    info.param_decls = tuple(d for d in info.param_decls if d.lstrip("-") not in taken)
    return Annotated[option.__origin__, info]


def card_options(fn: F) -> F:
    """Give a command the card flags (--input-size, --input-channels, --mean, --std,
    --labels, --num-classes); it receives what they say as ``card_fields``, a dict of card
    fields (empty when none is given). ``--channels`` also means --input-channels where the
    command has no --channels of its own."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "card_fields"]
    taken = {p.name for p in own}
    added = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_option_without(o, taken)
        )
        for name, o in CARD_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name, None) for name in CARD_OPTIONS}
        return fn(*args, card_fields=card_fields(**given), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def model_for(
    model: str, weights: Path | None, fields: dict[str, Any], seed: int = 0
) -> str | Model:
    """What a study takes as its model: the spec itself, or (card flags given) the model
    loaded with them, seeded first as the study would seed it (an untrained network)."""
    if not fields:
        return model
    from convsight.models import load_model
    from convsight.runtime import seed_everything

    seed_everything(seed)
    return load_model(model, weights, card_fields=fields)


@app.command("models")
@command
def models_cmd(
    source: Annotated[
        str | None, typer.Option(help="List every name of one source: seed, torchvision, timm.")
    ] = None,
) -> None:
    """List where models come from: seed networks, torchvision, timm and model files."""
    from convsight.models.zoo import SEEDS, model_sources, torchvision_models

    if source is not None:
        from convsight.models.timm_source import TIMM_PREFIX, timm_names

        listing: dict[str, Callable[[], list[str]]] = {
            "seed": lambda: list(SEEDS),
            "torchvision": torchvision_models,
            "timm": lambda: [TIMM_PREFIX + name for name in timm_names()],
        }
        if source not in listing:
            raise ConvsightError(f"unknown source '{source}': give seed, torchvision or timm")
        for name in listing[source]():
            out_console.print(name, highlight=False)
        return
    table = Table("source", "spec", "models", "notes")
    for row in model_sources():
        count = "-" if row.models is None else f"{row.models:,}"
        table.add_row(row.kind, row.spec, count, row.note)
    out_console.print(table)
    out_console.print(
        "`convsight models --source torchvision` (or seed, timm) lists every name; "
        "`convsight card WEIGHTS --arch ...` writes the card of a checkpoint.",
        highlight=False,
    )


@app.command("layers")
@command
@card_options
def layers_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    weights: WeightsOpt = None,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Print every layer name (as in named_modules), its type and output shape."""
    from convsight.layers import describe_layers
    from convsight.models import load_model

    loaded = load_model(model, weights, card_fields=card_fields)
    table = Table("layer", "type", "output shape", "parameters", title=loaded.card.name)
    for row in describe_layers(loaded.module, loaded.example_input()):
        shape = "x".join(map(str, row.output_shape)) if row.output_shape else "-"
        table.add_row(row.name, row.type, shape, f"{row.parameters:,}" if row.parameters else "")
    out_console.print(table)


@app.command("card")
@command
@card_options
def card_cmd(
    weights: Annotated[
        Path,
        typer.Argument(help="A state dict (.pt, .safetensors) or model file (.ts, .onnx ...)."),
    ],
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture of a state dict: torchvision name, timm:NAME, seed."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a card already beside the file.")] = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Write the model card (.json) beside a weights file, checked by loading it.

    The card starts from the architecture's own (torchvision's, timm's pretrained_cfg, a
    seed network's), takes the class count and input channels from the weights, then the
    flags given.
    """
    from convsight.models import card_path, make_card
    from convsight.paths import require_file
    from convsight.report import write_json

    path = require_file(weights, "weights file")
    target = card_path(path)
    if target.is_dir():
        raise ConvsightError(f"the card's place {target} is a folder")
    if target.exists() and not force:
        raise ConvsightError(f"{target} already exists: pass --force to replace it")
    fields = {**(card_fields or {}), **({"name": name} if name else {})}
    card = make_card(path, arch, fields)
    write_json(target, card.to_dict())
    h, w = card.input_size
    classes = f"{card.num_classes} classes" if card.num_classes else "no class scores"
    out_console.print(
        f"wrote {target}: {card.arch}, {card.channels} x {h}x{w} input, {classes}",
        highlight=False,
    )


@train_app.command("mnist")
@command
def train_mnist_cmd(
    out: OutOpt = Path("runs/mnist"),
    stride: Annotated[
        int, typer.Option(help="Convolution stride: 2 as the study states, or 1.")
    ] = 2,
    padding: Annotated[str, typer.Option(help="'same' or 'valid'.")] = "same",
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    train_limit: Annotated[int | None, typer.Option(min=1, help="Use the first N.")] = None,
    test_limit: Annotated[int | None, typer.Option(min=1, help="Use the first N.")] = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train the study's MNIST CNN; write model.pt + model.json, metrics.json, curves PNG."""
    from convsight.studies.mnist import train_mnist

    result = train_mnist(
        out=out,
        stride=stride,
        padding=padding,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_limit=train_limit,
        test_limit=test_limit,
        data_dir=data_dir,
        seed=seed,
        device=device,
        show_progress=not quiet,
    )
    acc = result["history"][-1]["test_accuracy"]
    out_console.print(f"test accuracy {acc:.4f} (the study reports 0.982); outputs in {out}")


@train_app.command("subset")
@command
def train_subset_cmd(
    data: Annotated[Path, typer.Option(help="A subset folder with train/ and test/.")],
    model: Annotated[
        str, typer.Option(help="five-class-cnn, or a torchvision backbone (vgg16 ...).")
    ] = "five-class-cnn",
    finetune: Annotated[
        bool, typer.Option(help="Keep the backbone's pretrained features; train a new head.")
    ] = False,
    weights: WeightsOpt = None,
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 224,
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    out: OutOpt = Path("runs/subset"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train on a subset: checkpoint + card, metrics, curves, confusion matrix, class means."""
    from convsight.studies.five_class import train_subset

    result = train_subset(
        data=data,
        out=out,
        model=model,
        finetune=finetune,
        weights=weights,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        show_progress=not quiet,
    )
    out_console.print(
        f"train accuracy {result['train_accuracy']:.3f}, test accuracy "
        f"{result['test_accuracy']:.3f} (the study: self-built 0.801, VGG16 0.927); "
        f"outputs in {out}"
    )


@data_app.command("subset")
@command
def data_subset_cmd(
    out: OutOpt,
    imagenet_root: Annotated[
        Path | None, typer.Option(help="ImageNet folder holding train/<synset>/*.JPEG.")
    ] = None,
    synsets: Annotated[
        str | None, typer.Option(help="Comma-separated; default: the study's five classes.")
    ] = None,
    from_folder: Annotated[
        Path | None, typer.Option(help="Any ImageFolder tree: DIR/<class>/<image>.")
    ] = None,
    from_fashion_mnist: Annotated[
        Path | None, typer.Option(help="Folder of the Fashion-MNIST idx files.")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names to keep.")
    ] = None,
    per_class: Annotated[int | None, typer.Option(help="At most N images per class.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of each class held out.")] = 0.2,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Make a reproducible train/test ImageFolder split with a manifest of every file."""
    from convsight.studies.five_class import make_subset

    manifest = make_subset(
        out=out,
        imagenet_root=imagenet_root,
        synsets=split_list(synsets) or None,
        from_folder=from_folder,
        from_fashion_mnist=from_fashion_mnist,
        classes=split_list(classes) or None,
        per_class=per_class,
        test_fraction=test_fraction,
        seed=seed,
        show_progress=not quiet,
    )
    for name, count in manifest["counts"].items():
        out_console.print(f"{name}: {count['train']} train, {count['test']} test", highlight=False)
    for problem in manifest["missing"]:
        err_console.print(f"[yellow]left out:[/yellow] {problem}", highlight=False)
    for item in manifest["skipped"]:
        err_console.print(
            f"[yellow]skipped:[/yellow] {item['path']}: {item['reason']}", highlight=False
        )
    out_console.print(f"manifest: {out / 'manifest.json'}")


@app.command("activations")
@command
@card_options
def activations_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    weights: WeightsOpt = None,
    image: Annotated[Path | None, typer.Option(help="Input image file.")] = None,
    mnist_index: Annotated[
        int | None, typer.Option(min=0, help="Input: MNIST test image N (default: the first 7).")
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated; default: every conv.")
    ] = None,
    max_channels: Annotated[int, typer.Option(min=1, help="Channels shown per grid.")] = 64,
    data_dir: DataDirOpt = None,
    out: OutOpt = Path("runs/activations"),
    seed: SeedOpt = 0,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Write each chosen layer's output for one input as a channel grid, plus the arrays."""
    from convsight.studies.mnist import write_activations

    written = write_activations(
        model=model_for(model, weights, card_fields, seed),
        weights=weights,
        image=image,
        mnist_index=mnist_index,
        layers=split_list(layers),
        max_channels=max_channels,
        data_dir=data_dir,
        out=out,
        seed=seed,
    )
    for path in written:
        out_console.print(f"wrote {path}")


@app.command("atlas")
@command
@card_options
def atlas_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    layers: Annotated[str, typer.Option(help="Comma-separated layer names.")],
    channels: Annotated[
        str | None, typer.Option(help="Channels of every layer, e.g. 0-7 or 0,5,9 (default: all).")
    ] = None,
    weights: WeightsOpt = None,
    dataset: Annotated[
        Path | None, typer.Option(help="Image folder for the top dataset examples.")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Dataset examples per channel.")] = 9,
    presets: Annotated[str, typer.Option(help="Visualization presets, comma-separated.")] = (
        "paper,robust"
    ),
    steps: Annotated[int | None, typer.Option(min=1, help="Steps for every preset.")] = None,
    size: Annotated[int | None, typer.Option(min=8, help="Image side for every preset.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Channels rendered together.")] = 16,
    out: OutOpt = Path("runs/atlas"),
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Build a static atlas site of a model's channels; a stopped run resumes where it was."""
    from convsight.studies.atlas import build_atlas

    summary = build_atlas(
        model=model_for(model, weights, card_fields, seed),
        layers=split_list(layers),
        out=out,
        weights=weights,
        channels=channels,
        dataset=dataset,
        top_k=top_k,
        presets=split_list(presets),
        steps=steps,
        size=size,
        batch=batch,
        seed=seed,
        show_progress=not quiet,
    )
    out_console.print(
        f"{summary['channels']} channels ({summary['rendered_this_run']} rendered now) "
        f"in {summary['seconds_this_run']:.0f} s; open {out / 'index.html'}"
    )


# Render knobs shared by maximize and classviz (None: the preset's value).
PresetOpt = Annotated[str, typer.Option(help="paper (the study) or robust (Lucid-style).")]
StepsOpt = Annotated[int | None, typer.Option(min=1, help="Optimization steps.")]
SizeOpt = Annotated[int | None, typer.Option(min=8, help="Image side (default: the model's).")]
LrOpt = Annotated[float | None, typer.Option(help="Step size (ascent) or Adam learning rate.")]
OptimizerOpt = Annotated[str | None, typer.Option(help="ascent (plain gradient) or adam.")]
ParamOpt = Annotated[str | None, typer.Option(help="pixel (model input) or fourier.")]
DecorrelateOpt = Annotated[
    bool | None, typer.Option("--decorrelate/--no-decorrelate", help="Decorrelated colour.")
]
ViewsOpt = Annotated[int | None, typer.Option(min=1, help="Augmented views per step.")]
L1Opt = Annotated[float | None, typer.Option(min=0.0, help="L1 penalty weight.")]
TvOpt = Annotated[float | None, typer.Option(min=0.0, help="Total-variation penalty weight.")]
PrecisionOpt = Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any other render setting, KEY=VALUE (e.g. jitter=16)."),
]


def _render_flags(**flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


@app.command("maximize")
@command
@card_options
def maximize_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    layer: Annotated[str, typer.Option(help="Layer name (see `convsight layers`).")],
    channels: Annotated[str, typer.Option(help="Channels, e.g. 0-63 or 0,5,9.")] = "0-15",
    weights: WeightsOpt = None,
    preset: PresetOpt = "robust",
    steps: StepsOpt = None,
    size: SizeOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    param: ParamOpt = None,
    decorrelate: DecorrelateOpt = None,
    views: ViewsOpt = None,
    l1: L1Opt = None,
    tv: TvOpt = None,
    precision: PrecisionOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/maximize"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Render the input each channel of a layer wants most (one batch row per channel)."""
    from convsight.optvis.render import parse_channels
    from convsight.studies.optvis import maximize

    summary = maximize(
        model=model_for(model, weights, card_fields, seed),
        layer=layer,
        channels=parse_channels(channels),  # garbage or a huge range fails before any work
        weights=weights,
        preset=preset,
        flags=_render_flags(
            steps=steps,
            size=size,
            lr=lr,
            optimizer=optimizer,
            param=param,
            decorrelate=decorrelate,
            views=views,
            l1=l1,
            tv=tv,
            precision=precision,
        ),
        extra=set_ or [],
        out=out,
        seed=seed,
        device=device,
        show_progress=not quiet,
    )
    dead = summary["dead_channels"]
    out_console.print(
        f"{len(summary['channels'])} channels of {layer} in {summary['seconds']:.1f} s"
        + (f"; dead: {', '.join(map(str, dead))}" if dead else "")
        + f"; outputs in {out}"
    )


@app.command("classviz")
@command
@card_options
def classviz_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    classes: Annotated[str, typer.Option(help="Class names or indices, comma-separated, or all.")],
    weights: WeightsOpt = None,
    init: Annotated[str, typer.Option(help="random (noise) or mean (class-mean image).")] = (
        "random"
    ),
    dataset: Annotated[
        str | None,
        typer.Option(help="For --init mean: an image folder (per-class sub-folders) or 'mnist'."),
    ] = None,
    preset: PresetOpt = "robust",
    steps: StepsOpt = None,
    size: SizeOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    param: ParamOpt = None,
    decorrelate: DecorrelateOpt = None,
    views: ViewsOpt = None,
    l1: L1Opt = None,
    tv: TvOpt = None,
    precision: PrecisionOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = Path("runs/classviz"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Render the input each class wants most (its score before softmax), one row per class."""
    from convsight.studies.optvis import classviz

    summary = classviz(
        model=model_for(model, weights, card_fields, seed),
        classes=split_list(classes),
        weights=weights,
        init=init,
        dataset=dataset,
        preset=preset,
        flags=_render_flags(
            steps=steps,
            size=size,
            lr=lr,
            optimizer=optimizer,
            param=param,
            decorrelate=decorrelate,
            views=views,
            l1=l1,
            tv=tv,
            precision=precision,
        ),
        extra=set_ or [],
        out=out,
        seed=seed,
        data_dir=data_dir,
        device=device,
        show_progress=not quiet,
    )
    for row in summary["classes"]:
        out_console.print(
            f"{row['name']}: score {row['objective']:.3g}, p={row['probability']:.2f}"
        )
    out_console.print(f"{summary['seconds']:.1f} s; outputs in {out}")


@app.command("paper")
@command
def paper_cmd(
    out: OutOpt = Path("runs/paper"),
    quick: Annotated[bool, typer.Option(help="Fewer epochs, channels and steps.")] = False,
    data_dir: DataDirOpt = None,
    vgg16_weights: Annotated[
        Path | None, typer.Option(help="VGG16 state dict (default: torchvision's download).")
    ] = None,
    classifier: Annotated[
        str, typer.Option(help="Class-score model when VGG16's classifier is unavailable.")
    ] = "mobilenet_v2",
    classifier_weights: Annotated[
        Path | None, typer.Option(help="State dict of --classifier (default: download).")
    ] = None,
    photos: Annotated[
        Path | None,
        typer.Option(help="ImageNet photos named <synset>_<name> (class means, saliency)."),
    ] = None,
    fashion_mnist: Annotated[
        Path | None, typer.Option(help="Fashion-MNIST idx folder: the offline part-4 stand-in.")
    ] = None,
    subset: Annotated[
        Path | None, typer.Option(help="A five-class subset from `convsight data subset`.")
    ] = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Remake the study: every part its inputs allow, as DIR/index.html with the numbers."""
    from convsight.studies.paper import run_paper

    results = run_paper(
        out=out,
        quick=quick,
        seed=seed,
        data_dir=data_dir,
        vgg16_weights=vgg16_weights,
        classifier=classifier,
        classifier_weights=classifier_weights,
        photos=photos,
        fashion_mnist=fashion_mnist,
        subset=subset,
        show_progress=not quiet,
    )
    out_console.print(f"the study remade in {results['seconds']:.0f} s: open {out / 'index.html'}")


MethodsOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated: saliency, ixg, smoothgrad, ig, guided, deconvnet, gradcam, "
        "gradcam++, scorecam, occlusion."
    ),
]
CamLayerOpt = Annotated[
    str | None, typer.Option("--layer", help="CAM layer (default: the last conv layer).")
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Rows per pass in batched work (default: each method's own: IG 32 path points, "
        "SmoothGrad 64 noisy copies, occlusion 16 windows, Score-CAM 4 masks on a CPU; "
        "deletion / insertion 16).",
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="auto (incremental inference for occlusion, else eager), eager, or frozen "
        "(a traced copy: faster Score-CAM / deletion / insertion)."
    ),
]


@app.command("saliency")
@command
@card_options
def saliency_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    image: Annotated[list[Path], typer.Option(help="Input image file (repeat for more).")],
    weights: WeightsOpt = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Class (index or name) for all images, or one per image, comma-separated; "
            "default: the predicted class."
        ),
    ] = None,
    methods: MethodsOpt = "saliency,guided,ig,gradcam",
    layer: CamLayerOpt = None,
    ig_steps: Annotated[int, typer.Option(min=1, help="Integrated Gradients steps.")] = 50,
    smoothgrad_samples: Annotated[int, typer.Option(min=1, help="SmoothGrad samples.")] = 16,
    batch_size: BatchOpt = None,
    engine: EngineOpt = "auto",
    out: OutOpt = Path("runs/saliency"),
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """A panel per image: the image, then each method's map as a heat map over it."""
    from convsight.studies.attribution import write_saliency

    written = write_saliency(
        model=model_for(model, weights, card_fields, seed),
        images=image,
        weights=weights,
        target=split_list(target),
        methods=split_list(methods),
        layer=layer,
        out=out,
        seed=seed,
        ig_steps=ig_steps,
        smoothgrad_samples=smoothgrad_samples,
        batch_size=batch_size,
        engine=engine,
        show_progress=not quiet,
    )
    for path in written:
        out_console.print(f"wrote {path}")


@app.command("evaluate")
@command
@card_options
def evaluate_cmd(
    model: Annotated[str, typer.Argument(help="Model name or checkpoint path.")],
    images: Annotated[Path, typer.Option(help="Folder of images (target: predicted class).")],
    weights: WeightsOpt = None,
    methods: MethodsOpt = "saliency,guided,ig,gradcam",
    metrics: Annotated[str, typer.Option(help="deletion, insertion, sanity.")] = (
        "deletion,insertion,sanity"
    ),
    layer: CamLayerOpt = None,
    step: Annotated[int, typer.Option(help="Pixels deleted / inserted per step.")] = 224,
    limit: Annotated[int | None, typer.Option(min=1, help="Use the first N images.")] = None,
    sanity_images: Annotated[int, typer.Option(help="Images for the sanity check.")] = 4,
    sanity_stages: Annotated[int, typer.Option(help="Randomization stages with a map.")] = 8,
    batch_size: BatchOpt = None,
    engine: EngineOpt = "auto",
    out: OutOpt = Path("runs/evaluate"),
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Deletion / insertion AUC and the randomization check: evaluation.json and plots."""
    from convsight.studies.attribution import write_evaluation

    written = write_evaluation(
        model=model_for(model, weights, card_fields, seed),
        images=images,
        weights=weights,
        methods=split_list(methods),
        metrics=split_list(metrics),
        layer=layer,
        step=step,
        limit=limit,
        batch_size=batch_size,
        engine=engine,
        sanity_images=sanity_images,
        sanity_stages=sanity_stages,
        out=out,
        seed=seed,
        show_progress=not quiet,
    )
    table = Table("method", "deletion AUC", "insertion AUC", "sanity (fully randomized)")
    import json

    summary = json.loads(written[0].read_text())
    for item in summary["skipped_images"]:
        say("skipped:", "yellow", f"{item['path']}: {item['reason']}")
    for row in summary["table"]:
        table.add_row(
            row["method"],
            str(row.get("deletion_auc", "-")),
            str(row.get("insertion_auc", "-")),
            str(row.get("sanity_spearman_fully_randomized", "-")),
        )
    out_console.print(table)
    for path in written:
        out_console.print(f"wrote {path}")


@app.command("demo")
@command
def demo_cmd(
    out: OutOpt = Path("demo-out"),
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    stride: Annotated[int, typer.Option(help="1 gives larger, more readable maps.")] = 1,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Train the MNIST CNN briefly and show its conv outputs for a 7."""
    from convsight.studies.mnist import train_mnist, write_activations

    start = time.perf_counter()
    run = out / "mnist"
    result = train_mnist(
        out=run,
        stride=stride,
        padding="valid" if stride == 1 else "same",
        epochs=epochs,
        data_dir=data_dir,
        seed=seed,
        show_progress=not quiet,
    )
    written = write_activations(
        model=str(run / "model.pt"), data_dir=data_dir, out=out / "activations", seed=seed
    )
    acc = result["history"][-1]["test_accuracy"]
    out_console.print(
        f"MNIST CNN (stride {stride}): test accuracy {acc:.4f} after {epochs} epoch(s) "
        f"(the study: 0.982) in {time.perf_counter() - start:.0f} s"
    )
    out_console.print(f"training curves: {run / 'training_curves.png'}")
    for path in written:
        if path.suffix == ".png":
            out_console.print(f"activation grid: {path}")


def main() -> None:
    """Entry point of the ``convsight`` command."""
    app(prog_name="convsight")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
