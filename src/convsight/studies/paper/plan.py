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
    compression_thresholds: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8)
    compression_repeats: int = 3  # random removals per point
    compression_finetune_images: int = 10000
    threads_k: int = 4  # invariances (and selective directions) per unit
    threads_softplus: float = 10.0  # beta of the softplus surrogate of the invariances
    threads_mnist_size: int | None = None  # render side of the MNIST unit (None: 28)
    threads_vgg16_size: int | None = 128
    threads_channels: int = 4  # channels of each projected layer
    # VGG16 layers projected: the middle (a readable projection) and the last conv layer
    threads_projection_layers: tuple[str, ...] = ("features.8", "features.28")


FULL = Plan(10, 16, None, None, None, 5, 224, 224)
QUICK = Plan(
    3,
    8,
    128,
    160,
    128,
    3,
    64,
    96,
    compression_thresholds=(0.9, 0.8),
    compression_repeats=1,
    compression_finetune_images=2000,
    threads_k=2,
    threads_vgg16_size=64,
    threads_channels=2,
)
