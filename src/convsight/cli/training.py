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
    DeviceOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    WeightsOpt,
    split_list,
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
