"""The study's own networks: the MNIST CNN and the five-class ImageNet CNN."""

from __future__ import annotations

import torch
from torch import nn

from convsight.errors import ConvsightError


def _conv(c_in: int, c_out: int, stride: int, padding: str) -> nn.Conv2d:
    if padding not in ("same", "valid"):
        raise ConvsightError(f"padding must be 'same' or 'valid', not '{padding}'")
    if stride not in (1, 2):
        raise ConvsightError(f"stride must be 1 or 2, not {stride}")
    # 'same' as in Keras: output side = ceil(input side / stride); padding 1 gives that for 3x3.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1 if padding == "same" else 0)


def _flat_size(features: nn.Module, channels: int, size: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, channels, size, size)).numel())


def _head(flat: int, dropout: float, num_classes: int) -> nn.Sequential:
    """The study's head: dense 128 (ReLU) + dropout, then the class scores."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


class MnistCNN(nn.Module):
    """conv 3x3/32 -> max-pool 2 -> conv 3x3/64 -> max-pool 2 -> dense 128 + dropout -> dense 10.

    The study states stride 2 and no padding; ``stride`` and ``padding`` choose the variant.
    Layers: ``features.0`` and ``features.3`` are the convolutions, ``classifier.4`` the logits.
    """

    def __init__(
        self, stride: int = 2, padding: str = "same", dropout: float = 0.3, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(1, 32, stride, padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            _conv(32, 64, stride, padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = _head(_flat_size(self.features, 1, 28), dropout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FiveClassCNN(nn.Module):
    """Four blocks (conv 3x3 + ReLU + batch norm + max-pool 2) of 32/64/128/128 channels,
    then dense 128 + dropout 0.3 and dense ``num_classes`` (5 in the study).

    Convolutions are ``features.0``, ``features.4``, ``features.8``, ``features.12``.
    """

    def __init__(
        self,
        num_classes: int = 5,
        image_size: int = 224,
        channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for width in widths:
            layers += [
                nn.Conv2d(c_in, width, 3, padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(width),
                nn.MaxPool2d(2),
            ]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = _head(
            _flat_size(self.features, channels, image_size), dropout, num_classes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
