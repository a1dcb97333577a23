"""torchvision's image classifiers by name (``vgg16``, ``resnet50``): cards from their weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard
from convsight.models.checkpoints import Build
from convsight.models.model import Model
from convsight.models.source import NamedSource


def torchvision_models() -> list[str]:
    """Names of torchvision's image classification models."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def torchvision_card(name: str, weights: Any | None = None) -> ModelCard:
    """The card of torchvision's ``name`` from its (default) weights' preprocessing."""
    import torchvision.models as tvm

    weights = weights or tvm.get_model_weights(name).DEFAULT
    preprocess = weights.transforms()
    crop = int(getattr(preprocess, "crop_size", [224])[0])
    resize = int(getattr(preprocess, "resize_size", [256])[0])
    interpolation = getattr(getattr(preprocess, "interpolation", None), "value", "bilinear")
    return ModelCard(
        name=name,
        arch=f"torchvision:{name}",
        input_size=(crop, crop),
        channels=3,
        mean=tuple(getattr(preprocess, "mean", IMAGENET_MEAN)),
        std=tuple(getattr(preprocess, "std", IMAGENET_STD)),
        labels=list(weights.meta["categories"]),
        resize=resize,
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        source=f"torchvision {name} {weights}",
    )


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision.models as tvm

    kwargs = {"num_classes": num_classes} if num_classes else {}
    return tvm.get_model(name, weights=None, **kwargs)


class TorchvisionSource(NamedSource):
    """torchvision's classifiers: ImageNet weights downloaded, or a local state dict."""

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` names one of torchvision's classifiers."""
        return spec in torchvision_models()

    def names(self) -> list[str]:
        """torchvision's classifiers."""
        return torchvision_models()

    def pretrained(self, spec: str) -> Model:
        """The classifier with its default ImageNet weights."""
        import torchvision.models as tvm

        weights = tvm.get_model_weights(spec).DEFAULT
        try:
            module = tvm.get_model(spec, weights=weights)
        except OSError as exc:  # URLError is an OSError
            raise ConvsightError(
                f"could not download the pretrained weights of '{spec}' ({exc}); "
                f"offline, pass a local state dict with --weights FILE"
            ) from exc
        return Model(module, torchvision_card(spec, weights))

    def builder(self, spec: str, options: dict[str, Any]) -> Build:
        """The untrained classifier with the class count asked for."""

        def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
            card = torchvision_card(spec)
            if num_classes and num_classes != card.num_classes:
                card = card.updated(num_classes=num_classes)
            return _torchvision(spec, num_classes), card

        return build

    def build(self, card: ModelCard, folder: Path) -> nn.Module | None:
        """The classifier ``card`` names, with its class count (unless features only)."""
        name = card.arch.partition(":")[2]
        if name not in torchvision_models():
            return None
        return _torchvision(name, None if card.features_only else card.num_classes)


TORCHVISION = TorchvisionSource(
    name="torchvision",
    spec="NAME (vgg16, resnet50, ...)",
    note="ImageNet weights downloaded on first use; offline --weights FILE",
    arch="torchvision",
    arch_help="a torchvision name",
    listable=True,
)
