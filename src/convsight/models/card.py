"""ModelCard: what a model takes and returns, the only place that knows normalization."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from convsight.errors import ConvsightError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (sorted synsets)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class ModelCard:
    """Input size and channels, normalization, class labels and provenance of a model.

    ``resize`` is the shorter side a photo is resized to before the centre crop to
    ``input_size``; ``None`` means the model takes only images of exactly ``input_size``.
    """

    name: str
    arch: str
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: list[str] | None = None
    num_classes: int | None = None
    features_only: bool = False
    resize: int | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.input_size = tuple(int(s) for s in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConvsightError(
                f"model card '{self.name}' gives {len(self.mean)} means and {len(self.std)} stds "
                f"for {self.channels} input channels"
            )
        if self.labels is not None and self.num_classes is None:
            self.num_classes = len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (the same layout as the cards in ../shared/models)."""
        data = asdict(self)
        data["input"] = {
            "size": list(data.pop("input_size")),
            "channels": data.pop("channels"),
            "mean": list(data.pop("mean")),
            "std": list(data.pop("std")),
            "resize": data.pop("resize"),
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> ModelCard:
        """Read a card; ``labels: "imagenet"`` expands to the 1000 ImageNet names."""
        try:
            inp = data["input"]
            labels = data.get("labels")
            if labels == "imagenet":
                labels = imagenet_labels()
            size = inp["size"]
            return cls(
                name=data.get("name") or name,
                arch=data["arch"],
                input_size=(size, size) if isinstance(size, int) else tuple(size),
                channels=int(inp["channels"]),
                mean=tuple(inp.get("mean", [0.0] * int(inp["channels"]))),
                std=tuple(inp.get("std", [1.0] * int(inp["channels"]))),
                labels=labels,
                num_classes=data.get("num_classes"),
                features_only=bool(data.get("features_only", False)),
                resize=inp.get("resize", _default_resize(size)),
                arch_options=dict(data.get("arch_options") or {}),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvsightError(
                f"model card '{name}' is missing or has a bad field: {exc}"
            ) from exc

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read a card from a JSON file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConvsightError(f"cannot read model card {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConvsightError(f"model card {path} is not a JSON object")
        return cls.from_dict(data, name=Path(path).stem)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space ([0, 1], N x C x H x W) to the model's input space."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space back to pixel space (not clipped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def label(self, index: int) -> str:
        """The readable name of class ``index`` (its number when the card has no labels)."""
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


def _default_resize(size: int | list[int]) -> int | None:
    side = size if isinstance(size, int) else min(size)
    return None if side < 64 else round(side * 256 / 224)


def card_path(weights: Path) -> Path:
    """Where the card of a weights file lives: beside it, same stem, ``.json``."""
    return Path(weights).with_suffix(".json")
