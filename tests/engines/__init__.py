"""Tests of :mod:`convsight.engines`."""

from __future__ import annotations

from convsight.models import ModelCard


def small_card(size: int = 16, classes: int = 4) -> ModelCard:
    """A card for a small RGB test network: ``size`` pixels square, ``classes`` classes."""
    return ModelCard(
        name="net",
        arch="test:net",
        input_size=(size, size),
        channels=3,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        labels=[f"c{i}" for i in range(classes)],
    )
