"""Plots: training curves."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def training_curves(
    history: Sequence[dict[str, float]], title: str = "", reference: float | None = None
) -> Figure:
    """Accuracy and loss per epoch, train and test; ``reference`` draws a target accuracy."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.4))
    acc, loss = fig.subplots(1, 2)
    acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    if reference is not None:
        acc.axhline(reference, color="grey", ls="--", lw=1, label=f"study: {reference}")
    acc.set_xlabel("epoch")
    acc.set_ylabel("accuracy")
    acc.legend()
    acc.grid(alpha=0.3)
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy")
    loss.legend()
    loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
