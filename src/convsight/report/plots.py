"""Plots: training curves, confusion matrices, accuracy against filters removed."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D


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
                str(int(counts[i, j])),
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
                fontsize=9,
            )
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if title:
        ax.set_title(title)
    return fig


COMPRESSION_STYLE = {"redundant": "C0", "l1": "C1", "random": "C2"}
COMPRESSION_LABEL = {
    "redundant": "near-copies removed (the study's idea)",
    "l1": "smallest L1 norm removed",
    "random": "random filters removed",
}


def _compression_points(trials: Sequence[dict], scope: str, strategy: str, key: str):
    """(filters kept, mean, min, max) of ``key`` over the repeats, by filters kept."""
    import numpy as np

    by_kept: dict[int, list[float]] = {}
    for t in trials:
        if t["scope"] == scope and t["strategy"] == strategy and t[key] is not None:
            by_kept.setdefault(t["kept"], []).append(t[key])
    kept = sorted(by_kept)
    values = [np.asarray(by_kept[k]) for k in kept]
    return kept, [v.mean() for v in values], [v.min() for v in values], [v.max() for v in values]


def compression_curves(result: dict) -> Figure:
    """Test accuracy against filters kept, one panel per conv layer and one for all layers:
    each way of choosing filters, with no retraining (solid) and after fine-tuning (dashed);
    random removals show their mean and range over the repeats."""
    trials = result["trials"]
    scopes = list(dict.fromkeys(t["scope"] for t in trials))
    columns = min(3, max(len(scopes), 1))
    rows = -(-max(len(scopes), 1) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, scope in zip(axes, scopes, strict=False):
        total = next(t["total"] for t in trials if t["scope"] == scope)
        for strategy, colour in COMPRESSION_STYLE.items():
            for key, style in (("accuracy", "o-"), ("finetuned", "s--")):
                kept, mean, low, high = _compression_points(trials, scope, strategy, key)
                if not kept:
                    continue
                ax.plot(kept, mean, style, color=colour, ms=4)
                if len(set(low) | set(high)) > 1 and low != high:
                    ax.fill_between(kept, low, high, color=colour, alpha=0.15, lw=0)
        ax.axhline(result["baseline_accuracy"], color="grey", ls=":", lw=1)
        ax.set_title(f"{scope} ({total} filters)", fontsize=9)
        ax.set_xlabel("filters kept")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[len(scopes) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=c, lw=2, label=COMPRESSION_LABEL[s])
        for s, c in COMPRESSION_STYLE.items()
    ]
    handles += [
        Line2D([], [], color="k", ls="-", marker="o", ms=4, label="no retraining"),
        Line2D([], [], color="k", ls="--", marker="s", ms=4, label="after 1 fine-tuning epoch"),
        Line2D([], [], color="grey", ls=":", label="all filters"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"Removing filters: {result['model']}, {result['data']}", fontsize=10)
    return fig
