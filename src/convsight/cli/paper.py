"""The study remade: ``convsight paper``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convsight.cli.app import app
from convsight.cli.errors import command, out_console
from convsight.cli.options import (
    DataDirOpt,
    RunFlags,
    run_options,
)


@app.command("paper")
@command
@run_options("runs/paper")
def paper_cmd(
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
    *,
    run: RunFlags,
) -> None:
    """Remake the study: every part its inputs allow, as DIR/index.html with the numbers."""
    from convsight.studies.paper import run_paper

    results = run_paper(
        quick=quick,
        data_dir=data_dir,
        vgg16_weights=vgg16_weights,
        classifier=classifier,
        classifier_weights=classifier_weights,
        photos=photos,
        fashion_mnist=fashion_mnist,
        subset=subset,
        **run.arguments(),
    )
    out_console.print(
        f"the study remade in {results['seconds']:.0f} s: open {run.out / 'index.html'}"
    )
