"""Commands that show what a network computes: activations, maximize, classviz, atlas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from convsight.cli.app import app, loaded_model
from convsight.cli.errors import command, out_console, say
from convsight.cli.options import (
    DataDirOpt,
    ModelArg,
    RenderFlags,
    RunFlags,
    WeightsOpt,
    YesOpt,
    card_options,
    render_options,
    run_options,
    split_list,
)

if TYPE_CHECKING:
    from convsight.models import Model


@app.command("activations")
@command
@card_options
@run_options("runs/activations", quiet=False)
def activations_cmd(
    model: ModelArg,
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
    *,
    card_fields: dict[str, Any],
    run: RunFlags,
) -> None:
    """Write each chosen layer's output for one input as a channel grid, plus the arrays."""
    from convsight.studies.mnist import ActivationsRequest, write_activations

    request = ActivationsRequest(
        image=image,
        mnist_index=mnist_index,
        layers=split_list(layers),
        max_channels=max_channels,
        data_dir=data_dir,
        seed=run.seed,
        weights=weights,
    )
    loaded = loaded_model(model, weights, card_fields, run.seed)
    result = write_activations(loaded, request, out=run.out)
    for path in result.files:
        out_console.print(f"wrote {path}")


AtlasLayersOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated layer names, or all (every convolution, activation and "
        "pooling layer)."
    ),
]
AtlasInvariancesOpt = Annotated[
    float,
    typer.Option(
        metavar="BETA",
        help="Each channel's first invariance as a GIF, from the softplus(BETA) surrogate's "
        "exact Hessian (0: none).",
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS",
        help="Render on a Ray cluster: local (start one here), auto (the one `ray start` "
        "began on this machine) or HOST:PORT of its head node. Needs convsight[ray].",
    ),
]
PlanOpt = Annotated[
    bool | None,
    typer.Option(
        "--plan/--no-plan",
        help="Print channels per layer, probed seconds per channel and the estimated "
        "total before the work (default: with --layers all).",
    ),
]

CompressionOpt = Annotated[
    Path | None,
    typer.Option(
        help="Labelled data (as `convsight compress --data` takes it): run the compression "
        "trials on the model and show them on the index and the conv layers' pages."
    ),
]
CompressionFinetuneOpt = Annotated[
    int, typer.Option(min=0, help="Fine-tuning images of the compression trials (0: none).")
]
ClassRelevanceOpt = Annotated[
    bool,
    typer.Option(
        help="With --dataset and a model with class scores: list on each channel page the "
        "classes it carries most relevance for (gradient x activation for the predicted "
        "class; a forward and backward pass more per batch of the dataset pass)."
    ),
]


@app.command("atlas")
@command
@card_options
@run_options("runs/atlas")
def atlas_cmd(
    model: ModelArg,
    layers: AtlasLayersOpt,
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
    invariances: AtlasInvariancesOpt = 0.0,
    ray: RayOpt = None,
    plan: PlanOpt = None,
    compression: CompressionOpt = None,
    compression_finetune: CompressionFinetuneOpt = 10000,
    yes: YesOpt = False,
    cheap: Annotated[
        bool,
        typer.Option(
            help="Render channels the cheap way: in bf16 where the device runs it natively, "
            "each batch stopped once its objective is flat (the same reach at about half the "
            "cost: benchmarks/atlas_cost.py); --no-cheap: fp32, every step."
        ),
    ] = True,
    class_relevance: ClassRelevanceOpt = True,
    *,
    card_fields: dict[str, Any],
    run: RunFlags,
) -> None:
    """Build a static atlas site of a model's channels; a stopped run resumes where it was."""
    from convsight.studies.atlas import AtlasRequest, Compression, build_atlas

    if ray is not None:
        from convsight.distributed import check_ray

        check_ray(ray)  # before the model is loaded
    trials = None if compression is None else Compression(compression, compression_finetune)
    request = AtlasRequest(
        layers=split_list(layers), channels=channels, dataset=dataset, top_k=top_k,
        presets=split_list(presets), steps=steps, size=size, batch=batch,
        invariances=invariances, ray=ray, plan=plan, compression=trials, yes=yes, cheap=cheap,
        class_relevance=class_relevance, weights=weights,
        model_spec=None if card_fields else model, **run.arguments(),
    )  # fmt: skip
    result = build_atlas(loaded_model(model, weights, card_fields, run.seed), request)
    out_console.print(
        f"{result.channels} channels ({result.rendered_this_run} rendered now) "
        f"in {result.seconds_this_run:.0f} s; open {run.out / 'index.html'}"
    )
    say_skipped(result.skipped_images)


def say_skipped(skipped: list[dict[str, str]]) -> None:
    """One line on stderr saying why images of the dataset were left out (if any were)."""
    if skipped:
        from convsight.data.images import skipped_reasons

        count = len(skipped)
        say(
            "skipped:",
            "yellow",
            f"{count} image{'s' if count > 1 else ''} of the dataset: {skipped_reasons(skipped)}",
        )


TrustDatasetOpt = Annotated[
    Path | None,
    typer.Option(
        help="Image folder (sub-folders too): measure each render's trust there: its reach "
        "and rank against the images and its path similarity to its top images and to "
        "random ones (docs/commands/maximize-classviz.md)."
    ),
]


@app.command("maximize")
@command
@card_options
@render_options
@run_options("runs/maximize", device=True)
def maximize_cmd(
    model: ModelArg,
    layer: Annotated[str, typer.Option(help="Layer name (see `convsight layers`).")],
    channels: Annotated[str, typer.Option(help="Channels, e.g. 0-63 or 0,5,9.")] = "0-15",
    weights: WeightsOpt = None,
    dataset: TrustDatasetOpt = None,
    yes: YesOpt = False,
    *,
    card_fields: dict[str, Any],
    render: RenderFlags,
    run: RunFlags,
) -> None:
    """Render the input each channel of a layer wants most (one batch row per channel)."""
    from convsight.studies.optvis import MaximizeRequest, maximize

    settings, chosen = render.settings()
    request = MaximizeRequest(
        layer,
        channels,  # read against the layer's channel count, before any work
        settings,
        seed=run.seed,
        yes=yes,
        weights=weights,
        chosen=chosen,
        dataset=dataset,
    )
    result = maximize(_render_model(model, weights, card_fields, run), request, **_shown(run))
    dead = result.dead_channels
    out_console.print(
        f"{len(result.channels)} channels of {layer} in {result.seconds:.1f} s"
        + (f"; dead: {', '.join(map(str, dead))}" if dead else "")
        + _off_path(result.trust)
        + f"; outputs in {run.out}"
    )


def _off_path(trust: Any) -> str:
    """``; off-path: N of M`` when trust was measured."""
    if trust is None:
        return ""
    return f"; off-path: {sum(unit.flagged for unit in trust.units)} of {len(trust.units)}"


def _render_model(
    model: str, weights: Path | None, card_fields: dict[str, Any] | None, run: RunFlags
) -> Model:
    """The model on ``--device``, seeded first (an untrained network's weights follow
    ``--seed``, so a run repeats; the render seeds itself again)."""
    return loaded_model(model, weights, card_fields, run.seed, run.device or "auto")


def _shown(run: RunFlags) -> dict[str, Any]:
    """``out`` and ``show_progress`` of a study."""
    return {"out": run.out, "show_progress": not run.quiet}


ClassDatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="For --init mean: an image folder (per-class sub-folders) or 'mnist'. An "
        "image folder also measures each class model's trust there (reach, rank, path "
        "similarity), whatever the start."
    ),
]
JudgeOpt = Annotated[
    str | None,
    typer.Option(
        metavar="MODEL",
        help="A second model with the same classes (loaded as MODEL is): each class "
        "model's top-1 and top-5 hit by it.",
    ),
]
JudgeWeightsOpt = Annotated[
    Path | None, typer.Option(help="Weights file of --judge.", metavar="FILE")
]


@app.command("classviz")
@command
@card_options
@render_options
@run_options("runs/classviz", device=True)
def classviz_cmd(
    model: ModelArg,
    classes: Annotated[
        str,
        typer.Option(
            help="Class names or indices, comma-separated, or all; or other targets: "
            "margin:NAME, segment:CLASS[:MASK.png], output:INDEX (one image each)."
        ),
    ],
    weights: WeightsOpt = None,
    init: Annotated[str, typer.Option(help="random (noise) or mean (class-mean image).")] = (
        "random"
    ),
    dataset: ClassDatasetOpt = None,
    data_dir: DataDirOpt = None,
    judge: JudgeOpt = None,
    judge_weights: JudgeWeightsOpt = None,
    yes: YesOpt = False,
    *,
    card_fields: dict[str, Any],
    render: RenderFlags,
    run: RunFlags,
) -> None:
    """Render the input each class wants most (its score before softmax), one row per class."""
    from convsight.studies.optvis import ClassvizRequest, classviz

    settings, chosen = render.settings("class")
    request = ClassvizRequest(
        split_list(classes),
        settings,
        init=init,
        dataset=dataset,
        data_dir=data_dir,
        seed=run.seed,
        yes=yes,
        weights=weights,
        chosen=chosen,
    )
    from convsight.studies.optvis_results import judged, shown_score

    loaded = _render_model(model, weights, card_fields, run)
    device = run.device or "auto"
    judging = loaded_model(judge, judge_weights, None, None, device) if judge else None
    result = classviz(loaded, request, **_shown(run), judge=judging)
    for row in result.rows:
        out_console.print(
            f"{row['name']}: score {row['objective']:.3g}, {shown_score(row)}{judged(row)}"
        )
    out_console.print(f"{result.seconds:.1f} s{_off_path(result.trust)}; outputs in {run.out}")
