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


def model_for(
    model: str, weights: Path | None, fields: dict[str, Any] | None, seed: int = 0
) -> Model:
    """The model a study takes, loaded once (with the card flags given), seeded first as the
    study would seed it (an untrained network's weights come from the seed)."""
    from convsight.models import load_model
    from convsight.runtime import seed_everything

    seed_everything(seed)
    return load_model(model, weights, card_fields=fields or None)
