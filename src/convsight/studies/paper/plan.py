"""How much work each part of the study does: the full study or a quick look."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Plan:
    """How much work each part does: the full study or a quick look."""

    mnist_epochs: int
    channels: int
    robust_steps: int | None
    robust_size: int | None
    class_steps: int | None
    subset_epochs: int
    subset_size: int
    backbone_size: int
    paper_size: int | None = None  # image side of the paper preset (None: the model's)
    class_size: int | None = None  # image side of the class models (None: the model's)
    mnist_train_limit: int | None = None


FULL = Plan(10, 16, None, None, None, 5, 224, 224)
QUICK = Plan(3, 8, 128, 160, 128, 3, 64, 96)
