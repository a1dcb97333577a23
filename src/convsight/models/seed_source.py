"""The seed networks by name (``mnist-cnn``, ``five-class-cnn``): their cards and options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard
from convsight.models.checkpoints import Build
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.models.source import NamedSource

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _mnist_card(options: dict[str, Any]) -> ModelCard:
    n = int(options.get("num_classes", 10))
    return ModelCard(
        name="mnist-cnn",
        arch="convsight:mnist-cnn",
        input_size=(28, 28),
        channels=1,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        labels=options.get("labels") or [str(d) for d in range(n)],
        num_classes=n,
        arch_options=options,
        source="the study's MNIST CNN (untrained unless weights are given)",
    )


def _five_class_card(options: dict[str, Any]) -> ModelCard:
    size = int(options.get("image_size", 224))
    given = options.get("labels")
    n = int(options.get("num_classes", len(given) if isinstance(given, (list, tuple)) else 5))
    labels = given or (
        ["goldfish", "ostrich", "green snake", "Siberian husky", "lemon"]
        if n == 5
        else [str(i) for i in range(n)]
    )
    return ModelCard(
        name="five-class-cnn",
        arch="convsight:five-class-cnn",
        input_size=(size, size),
        channels=int(options.get("channels", 3)),
        mean=IMAGENET_MEAN if int(options.get("channels", 3)) == 3 else (0.5,),
        std=IMAGENET_STD if int(options.get("channels", 3)) == 3 else (0.5,),
        labels=labels,
        num_classes=n,
        resize=round(size * 256 / 224),
        arch_options={k: v for k, v in options.items() if k != "labels"},
        source="the study's five-class CNN (untrained unless weights are given)",
    )


# name -> (builder, default card, accepted options)
SEEDS: dict[str, tuple[Callable[..., nn.Module], Callable[[dict], ModelCard], set[str]]] = {
    "mnist-cnn": (MnistCNN, _mnist_card, {"stride", "padding", "dropout", "num_classes"}),
    "five-class-cnn": (
        FiveClassCNN,
        _five_class_card,
        {"num_classes", "image_size", "channels", "dropout"},
    ),
}


def build_seed(name: str, options: dict[str, Any] | None = None) -> tuple[nn.Module, ModelCard]:
    """An untrained seed network and its card (the card also carries the options)."""
    builder, make_card, accepted = SEEDS[name]
    options = dict(options or {})
    unknown = set(options) - accepted - {"labels"}
    if unknown:
        raise ConvsightError(f"model '{name}' has no option(s) {', '.join(sorted(unknown))}")
    try:
        card = make_card(options)
        kwargs = {k: v for k, v in options.items() if k in accepted}
        if name == "five-class-cnn":
            kwargs["num_classes"] = card.num_classes
        return builder(**kwargs), card
    except ConvsightError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConvsightError(
            f"model '{name}' cannot be built with the options {options}: {reason}"
        ) from exc


class SeedSource(NamedSource):
    """The study's networks by name, untrained unless weights are given."""

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` names a seed network."""
        return spec in SEEDS

    def names(self) -> list[str]:
        """The seed networks' names."""
        return list(SEEDS)

    def builder(self, spec: str, options: dict[str, Any]) -> Build:
        """The seed network with its ``options`` and the class count and channels asked for."""
        accepted = SEEDS[spec][2]

        def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
            given = {"num_classes": num_classes, "channels": channels}
            return build_seed(
                spec, {**options, **{k: v for k, v in given.items() if v and k in accepted}}
            )

        return build

    def build(self, card: ModelCard, folder: Path) -> nn.Module | None:
        """The seed network ``card`` names, with the card's options."""
        name = card.arch.partition(":")[2]
        return build_seed(name, card.arch_options)[0] if name in SEEDS else None


SEED = SeedSource(
    name="seed",
    spec=", ".join(SEEDS),
    note="the study's networks, untrained unless --weights",
    arch="convsight",
    arch_help="a seed network",
    listable=True,
)
