"""The ``convsight`` command and its groups; commands register themselves on import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from convsight.cli.errors import OneLineErrors

if TYPE_CHECKING:
    from pathlib import Path

    from convsight.models import Model

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


def loaded_model(
    model: str,
    weights: Path | None,
    fields: dict[str, Any] | None,
    seed: int | None = None,
    device: str | None = None,
) -> Model:
    """The model a command works on, loaded once with the card flags' ``fields``: seeded
    first with ``seed`` when given (an untrained network's weights then follow it), and put
    on ``device`` (resolved before anything is loaded) when given."""
    from convsight.models import load_model
    from convsight.runtime import resolve_device, seed_everything

    dev = None if device is None else resolve_device(device)
    if seed is not None:
        seed_everything(seed)
    loaded = load_model(model, weights, card_fields=fields or None)
    return loaded if dev is None else loaded.to(dev)
