"""Commands that train models and build datasets (and the demo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from convsight.cli.app import app, data_app, train_app
from convsight.cli.errors import command, err_console, out_console
from convsight.cli.options import (
    DataDirOpt,
    RunFlags,
    WeightsOpt,
    run_options,
    split_list,
)
from convsight.studies.numbers import STUDY


@train_app.command("mnist")
@command
@run_options("runs/mnist", device=True)
def train_mnist_cmd(
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
    *,
    run: RunFlags,
) -> None:
    """Train the study's MNIST CNN; write model.pt + model.json, metrics.json, curves PNG."""
    from convsight.studies.mnist import MnistTrainingRequest, train_mnist

    request = MnistTrainingRequest(
        stride=stride,
        padding=padding,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_limit=train_limit,
        test_limit=test_limit,
        data_dir=data_dir,
        **run.arguments(),
    )
    acc = train_mnist(request).test_accuracy
    out_console.print(
        f"test accuracy {acc:.4f} (the study reports {STUDY.mnist_test_accuracy}); "
        f"outputs in {run.out}"
    )


@train_app.command("subset")
@command
@run_options("runs/subset", device=True)
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
    *,
    run: RunFlags,
) -> None:
    """Train on a subset: checkpoint + card, metrics, curves, confusion matrix, class means."""
    from convsight.studies.five_class import SubsetTrainingRequest, train_subset

    request = SubsetTrainingRequest(
        data=data,
        model=model,
        finetune=finetune,
        weights=weights,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        **run.arguments(),
    )
    result = train_subset(request)
    out_console.print(
        f"train accuracy {result.train_accuracy:.3f}, test accuracy "
        f"{result.test_accuracy:.3f} (the study: self-built "
        f"{STUDY.five_class_test_accuracy}, VGG16 {STUDY.vgg16_five_class_test_accuracy}); "
        f"outputs in {run.out}"
    )


@data_app.command("subset")
@command
@run_options(None)
def data_subset_cmd(
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
    *,
    run: RunFlags,
) -> None:
    """Make a reproducible train/test ImageFolder split with a manifest of every file."""
    from convsight.studies.subset import SubsetRequest, make_subset

    request = SubsetRequest(
        imagenet_root=imagenet_root,
        synsets=split_list(synsets) or None,
        from_folder=from_folder,
        from_fashion_mnist=from_fashion_mnist,
        classes=split_list(classes) or None,
        per_class=per_class,
        test_fraction=test_fraction,
        **run.arguments(),
    )
    subset = make_subset(request)
    for name, count in subset.counts.items():
        out_console.print(f"{name}: {count['train']} train, {count['test']} test", highlight=False)
    for problem in subset.missing:
        err_console.print(f"[yellow]left out:[/yellow] {problem}", highlight=False)
    for item in subset.skipped:
        err_console.print(
            f"[yellow]skipped:[/yellow] {item['path']}: {item['reason']}", highlight=False
        )
    out_console.print(f"manifest: {run.out / 'manifest.json'}")


@app.command("demo")
@command
@run_options("demo-out")
def demo_cmd(
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    stride: Annotated[int, typer.Option(help="1 gives larger, more readable maps.")] = 1,
    data_dir: DataDirOpt = None,
    *,
    run: RunFlags,
) -> None:
    """Train the MNIST CNN briefly and show its conv outputs for a 7."""
    from convsight.studies.mnist import (
        ActivationsRequest,
        MnistTrainingRequest,
        train_mnist,
        write_activations,
    )

    start = time.perf_counter()
    mnist = run.out / "mnist"
    request = MnistTrainingRequest(
        stride=stride,
        padding="valid" if stride == 1 else "same",
        epochs=epochs,
        data_dir=data_dir,
        **(run.arguments() | {"out": mnist}),
    )
    result = train_mnist(request)
    written = write_activations(
        result.model,
        ActivationsRequest(data_dir=data_dir, seed=run.seed),
        out=run.out / "activations",
    ).files
    acc = result.test_accuracy
    out_console.print(
        f"MNIST CNN (stride {stride}): test accuracy {acc:.4f} after {epochs} epoch(s) "
        f"(the study: {STUDY.mnist_test_accuracy}) in {time.perf_counter() - start:.0f} s"
    )
    out_console.print(f"training curves: {mnist / 'training_curves.png'}")
    for path in written:
        if path.suffix == ".png":
            out_console.print(f"activation grid: {path}")
