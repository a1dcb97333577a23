"""Commands for attribution maps and their evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from convsight.attribution.lrp import COMPOSITES
from convsight.cli.app import app, loaded_model
from convsight.cli.errors import command, out_console, say
from convsight.cli.options import (
    MetricsOpt,
    ModelArg,
    RunFlags,
    WeightsOpt,
    card_options,
    method_options,
    one_of,
    run_options,
    split_list,
)
from convsight.studies.attribution import METRICS


@app.command("saliency")
@command
@card_options
@method_options
@run_options("runs/saliency")
def saliency_cmd(
    model: ModelArg,
    image: Annotated[list[Path], typer.Option(help="Input image file (repeat for more).")],
    weights: WeightsOpt = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="What to explain, for all images or one per image, comma-separated: a class "
            "(index or name), class:NAME, margin:NAME (a class against the rest), "
            "segment:CLASS[:MASK.png] (per-pixel outputs), output:INDEX (regression); "
            "default: the predicted class."
        ),
    ] = None,
    ig_steps: Annotated[int, typer.Option(min=1, help="Integrated Gradients steps.")] = 50,
    smoothgrad_samples: Annotated[int, typer.Option(min=1, help="SmoothGrad samples.")] = 16,
    *,
    card_fields: dict[str, Any],
    attribution: dict[str, Any],
    run: RunFlags,
) -> None:
    """A panel per image: the image, then each method's map as a heat map over it."""
    from convsight.studies.saliency import SaliencyRequest, write_saliency

    request = SaliencyRequest(
        images=image,
        targets=split_list(target),
        **attribution,
        ig_steps=ig_steps,
        smoothgrad_samples=smoothgrad_samples,
        seed=run.seed,
        model_name=None if card_fields else model,
        weights=weights,
    )
    loaded = loaded_model(model, weights, card_fields, run.seed)
    shown = not run.quiet
    result = write_saliency(loaded, request, out=run.out, show_progress=shown, seeded=True)
    for path in result.files:
        out_console.print(f"wrote {path}")


@app.command("evaluate")
@command
@card_options
@method_options
@run_options("runs/evaluate")
def evaluate_cmd(
    model: ModelArg,
    images: Annotated[Path, typer.Option(help="Folder of images.")],
    weights: WeightsOpt = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="What to explain in every image: a class, class:NAME, margin:NAME, "
            "segment:CLASS[:MASK.png], output:INDEX; default: each image's predicted class."
        ),
    ] = None,
    metrics: MetricsOpt = ",".join(METRICS),
    step: Annotated[int, typer.Option(help="Pixels deleted / inserted per step.")] = 224,
    limit: Annotated[int | None, typer.Option(min=1, help="Use the first N images.")] = None,
    sanity_images: Annotated[int, typer.Option(help="Images for the sanity check.")] = 4,
    sanity_stages: Annotated[int, typer.Option(help="Randomization stages with a map.")] = 8,
    *,
    card_fields: dict[str, Any],
    attribution: dict[str, Any],
    run: RunFlags,
) -> None:
    """Deletion / insertion AUC and the randomization check: evaluation.json and plots."""
    from convsight.studies.evaluation import EvaluationRequest, write_evaluation

    request = EvaluationRequest(
        images=images,
        **attribution,
        metrics=split_list(metrics),
        step=step,
        limit=limit,
        sanity_images=sanity_images,
        sanity_stages=sanity_stages,
        seed=run.seed,
        model_name=None if card_fields else model,
        weights=weights,
        target=target,
    )
    loaded = loaded_model(model, weights, card_fields, run.seed)
    result = write_evaluation(loaded, request, out=run.out, show_progress=not run.quiet)
    table = Table("method", "deletion AUC", "insertion AUC", "sanity (fully randomized)")
    for item in result.skipped:
        say("skipped:", "yellow", f"{item['path']}: {item['reason']}")
    for row in result.table:
        table.add_row(
            row["method"],
            str(row.get("deletion_auc", "-")),
            str(row.get("insertion_auc", "-")),
            str(row.get("sanity_spearman_fully_randomized", "-")),
        )
    out_console.print(table)
    for path in result.files:
        out_console.print(f"wrote {path}")


EXPLAIN_TARGET_HELP = (
    "What to explain: a class (index or name), class:NAME, margin:NAME, output:INDEX; "
    "default: the predicted class."
)

EXPLAIN_COMPOSITE_HELP = (
    f"{one_of(COMPOSITES)}: zennit's LRP composite of the channel relevance (CRP, on models "
    "LRP has rules for)."
)


@app.command("explain")
@command
@card_options
@run_options("runs/explain")
def explain_cmd(
    model: ModelArg,
    image: Annotated[Path, typer.Option(help="The photo whose decision to explain.")],
    layers: Annotated[
        str | None,
        typer.Option(help="Layers, comma-separated; default: the last stage's output."),
    ] = None,
    target: Annotated[str | None, typer.Option(help=EXPLAIN_TARGET_HELP)] = None,
    weights: WeightsOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Channels shown per layer.")] = 6,
    atlas: Annotated[
        Path | None,
        typer.Option(help="An atlas folder of this model: its channel pictures and pages."),
    ] = None,
    dataset: Annotated[
        Path | None, typer.Option(help="A folder of images: each channel's top examples.")
    ] = None,
    examples: Annotated[int, typer.Option(min=1, help="Dataset examples per channel.")] = 4,
    preset: Annotated[
        str, typer.Option(help="Preset of the pictures rendered (none in the atlas).")
    ] = "robust",
    steps: Annotated[int, typer.Option(min=1, help="Steps of the pictures rendered.")] = 64,
    size: Annotated[int, typer.Option(min=8, help="Side of the pictures rendered.")] = 96,
    composite: Annotated[str, typer.Option(help=EXPLAIN_COMPOSITE_HELP)] = "epsilon_plus_flat",
    *,
    card_fields: dict[str, Any],
    run: RunFlags,
) -> None:
    """Why this decision: per layer the channels that carried it (share of the relevance),
    where they fired, what they want, their dataset examples; explain.html/.json/.npz."""
    from convsight.studies.explain import ExplainRequest, write_explain

    request = ExplainRequest(
        image=image, target=target, layers=tuple(split_list(layers)) or None, top=top,
        atlas=atlas, dataset=dataset, examples=examples, preset=preset, steps=steps, size=size,
        seed=run.seed, model_name=None if card_fields else model, weights=weights,
        composite=composite,
    )  # fmt: skip
    loaded = loaded_model(model, weights, card_fields, run.seed)
    result = write_explain(loaded, request, out=run.out, seeded=True)
    for path in result.files:
        if path.suffix in (".html", ".json", ".npz"):
            out_console.print(f"wrote {path}")
