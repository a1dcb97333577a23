"""Commands about models: where they come from, their layers, their cards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from convsight.cli.app import app
from convsight.cli.errors import command, out_console
from convsight.cli.options import ModelArg, WeightsOpt, card_options, one_of
from convsight.errors import ConvsightError
from convsight.models.sources import SOURCES

LISTED = [source.name for source in SOURCES if source.listable]
"""The sources ``convsight models --source NAME`` lists every name of."""


@app.command("models")
@command
def models_cmd(
    source: Annotated[
        str | None,
        typer.Option(help=f"List every name of one source: {', '.join(LISTED)}."),
    ] = None,
) -> None:
    """List where models come from: seed networks, torchvision, timm and model files."""
    if source is not None:
        if source not in LISTED:
            raise ConvsightError(f"unknown source '{source}': give {one_of(LISTED)}")
        listed = next(s for s in SOURCES if s.name == source)
        for name in listed.listing():
            out_console.print(name, highlight=False)
        return
    table = Table("source", "spec", "models", "notes")
    for row in SOURCES:
        count = row.count()
        table.add_row(row.name, row.spec, "-" if count is None else f"{count:,}", row.describe())
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
    model: ModelArg,
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
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a card already beside the file.")] = False,
    card_fields: dict[str, Any] | None = None,
) -> None:
    """Write the model card (.json) beside a weights file, checked by loading it.

    The card starts from the architecture's own (torchvision's, timm's pretrained_cfg, a
    seed network's), takes the class count and input channels from the weights, then the
    flags given. Your own class (``--arch net.py:SpecNet``, ``--arch-args JSON``) is recorded
    with the file relative to the card's folder, where it must live.
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
    card = make_card(path, fields.pop("arch", None), fields)
    write_json(target, card.to_dict())
    h, w = card.input_size
    classes = f"{card.num_classes} classes" if card.num_classes else "no class scores"
    out_console.print(
        f"wrote {target}: {card.arch}, {card.channels} x {h}x{w} input, {classes}",
        highlight=False,
    )
