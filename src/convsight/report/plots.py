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


def confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = ""
) -> Figure:
    """Counts of (true class, predicted class), rows normalized for the colour."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.2 + 0.8 * len(labels)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                int(counts[i, j]),
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
                fontsize=9,
            )
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if title:
        ax.set_title(title)
    return fig
