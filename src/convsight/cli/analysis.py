"""Commands that analyse a trained network around what it computes: invariances, DeconvNet
projections, and what removing its near-copy filters costs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from convsight.cli.app import app, loaded_model
from convsight.cli.errors import command, out_console, say
from convsight.cli.options import (
    ModelArg,
    RenderFlags,
    RunFlags,
    WeightsOpt,
    card_options,
    render_options,
    run_options,
)

if TYPE_CHECKING:
    from convsight.analysis.operator_check import OperatorCheck
    from convsight.studies.invariances import InvariancesResult

LayerOpt = Annotated[
    str | None, typer.Option(help="Layer name (see `convsight layers`); with --channel.")
]
ChannelOpt = Annotated[int | None, typer.Option(min=0, help="Channel of --layer.")]
ClassOpt = Annotated[
    str | None, typer.Option("--class", help="Class name or index (instead of a channel).")
]
KOpt = Annotated[int, typer.Option("--k", help="Directions of each kind (invariant, selective).")]
StepOpt = Annotated[
    float, typer.Option("--h", help="Finite-difference step: RMS change per pixel ([0, 1] pixels).")
]
SmoothOpt = Annotated[
    float,
    typer.Option(
        "--smooth",
        metavar="SIGMA",
        help="Hessian of the Gaussian-smoothed response: noise std per pixel (0: off).",
    ),
]
SamplesOpt = Annotated[int, typer.Option(help="Noise draws for --smooth.")]
SoftplusOpt = Annotated[
    float,
    typer.Option(
        "--softplus",
        metavar="BETA",
        help="Exact Hessian of the network with each ReLU replaced by softplus(BETA x)/BETA "
        "(0: off; instead of --h/--smooth).",
    ),
]
FramesOpt = Annotated[int, typer.Option(help="Frames per direction, optimum first.")]
AngleOpt = Annotated[float, typer.Option(help="Degrees moved along each direction on the sphere.")]
BasisOpt = Annotated[
    str,
    typer.Option(
        "--basis",
        help="Take the Hessian in the render's decorrelated Fourier image basis (fourier: "
        "directions with natural-image statistics) or in single pixels (pixel).",
    ),
]


def warn_if_unreliable(check: OperatorCheck | None) -> None:
    """One line on stderr when the numerical Hessian failed its own check."""
    if check is None or check.reliable:
        return
    say(
        "warning:",
        "yellow",
        f"the numerical Hessian at this scale is far from a symmetric linear map (linearity "
        f"error {check.linearity:.2f}, worst eigen-residual "
        f"{max(check.residuals, default=0):.2f}): the directions are unreliable; "
        "compare them with random_directions in summary.json, or smooth more "
        "(--smooth SIGMA --samples N)",
    )


@app.command("invariances")
@command
@card_options
@render_options
@run_options("runs/invariances", device=True)
def invariances_cmd(
    model: ModelArg,
    layer: LayerOpt = None,
    channel: ChannelOpt = None,
    target: ClassOpt = None,
    k: KOpt = 4,
    h: StepOpt = 0.01,
    smooth: SmoothOpt = 0.0,
    samples: SamplesOpt = 8,
    softplus: SoftplusOpt = 0.0,
    ascend: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps of ascent up the sphere before the Hessian (0: analyse the render).",
        ),
    ] = 0,
    frames: FramesOpt = 9,
    angle: AngleOpt = 45.0,
    basis: BasisOpt = "fourier",
    weights: WeightsOpt = None,
    *,
    card_fields: dict[str, Any],
    render: RenderFlags,
    run: RunFlags,
) -> None:
    """Render the optimum of a channel (or class), then the directions on the sphere of its norm
    along which the response falls least (invariances) and most (selective), from the Hessian;
    each labelled by the response measured along its path."""
    from convsight.analysis.invariances import HessianScale
    from convsight.studies.invariances import InvariancesRequest, Unit, write_invariances

    unit = Unit(layer, channel, target)
    settings, given = render.settings(unit.kind)
    request = InvariancesRequest(
        unit, settings, frozenset(given), k=k, scale=HessianScale(h, smooth, samples, softplus),
        ascend=ascend, frames=frames, angle=angle, basis=basis, weights=weights,
        **run.arguments(),
    )  # fmt: skip
    result = write_invariances(loaded_model(model, weights, card_fields, run.seed), request)
    _print_invariances(result, run.out)


def _print_invariances(result: InvariancesResult, out: Path) -> None:
    found = result.found
    warn_if_unreliable(found.check)
    labels = "; ".join(
        f"{row['kind'][:3]} {row['rank']} {row['label']}" for row in result.directions
    )
    out_console.print(
        f"response {found.value:.3g}; Hessian in the {found.basis.name} basis; {labels}; "
        f"{found.products} Hessian-vector products in {found.seconds:.1f} s; outputs in {out}"
    )


@app.command("projections")
@command
@card_options
@run_options("runs/projections")
def projections_cmd(
    model: ModelArg,
    layer: Annotated[str, typer.Option(help="Layer name (see `convsight layers`).")],
    dataset: Annotated[Path, typer.Option(help="Image folder to find the top examples in.")],
    channels: Annotated[str, typer.Option(help="Channels, e.g. 0-3 or 0,5,9.")] = "0-3",
    top_k: Annotated[int, typer.Option(min=1, help="Dataset examples per channel.")] = 9,
    weights: WeightsOpt = None,
    *,
    card_fields: dict[str, Any],
    run: RunFlags,
) -> None:
    """Project each channel's strongest unit in its top dataset images back to pixels
    (DeconvNet, Zeiler & Fergus 2014): a PNG per channel (patches, projections), npz, JSON."""
    from convsight.studies.projections import ProjectionsRequest, write_projections

    request = ProjectionsRequest(
        layer, dataset, channels, top_k=top_k, weights=weights, **run.arguments()
    )
    result = write_projections(loaded_model(model, weights, card_fields, run.seed), request)
    out_console.print(
        f"{len(result.channels)} channels of {layer}, top {top_k} of "
        f"{result.dataset_size} images, in {result.seconds:.1f} s; outputs in {run.out}"
    )


def _thresholds(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {text!r}") from None


@app.command("compress")
@command
@card_options
@run_options("runs/compress", device=True)
def compress_cmd(
    model: ModelArg,
    data: Annotated[
        Path,
        typer.Option(help="MNIST folder, or a subset folder with train/ and test/ (the model's)."),
    ],
    thresholds: Annotated[
        str, typer.Option(help="Similarity thresholds (Pearson r), comma-separated.")
    ] = "0.95,0.9,0.85,0.8",
    random_repeats: Annotated[int, typer.Option(help="Random removals per point.")] = 3,
    finetune_images: Annotated[
        int, typer.Option(help="Training images of the one fine-tuning epoch (0: none).")
    ] = 10000,
    test_images: Annotated[
        int | None, typer.Option(help="Score on the first N test images only (default: all).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the fine-tuning.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 128,
    weights: WeightsOpt = None,
    *,
    card_fields: dict[str, Any],
    run: RunFlags,
) -> None:
    """Remove the filters that are near-copies of another (up to rotation, flip, colour order)
    at several thresholds, beside as many smallest-L1 and random filters; test accuracy with
    no retraining and after one fine-tuning epoch (compression.json, compression.png)."""
    from convsight.studies.compression import CompressionRequest, compress

    request = CompressionRequest(
        data, thresholds=_thresholds(thresholds), random_repeats=random_repeats,
        finetune_images=finetune_images, test_images=test_images, lr=lr, batch_size=batch_size,
        **run.arguments(),
    )  # fmt: skip
    result = compress(loaded_model(model, weights, card_fields, run.seed), request)
    out_console.print(
        f"{len(result.trials)} removals of {result.model} scored on {result.data} "
        f"(all filters: {result.baseline_accuracy:.4f}) in {result.seconds:.1f} s; "
        f"outputs in {run.out}"
    )
