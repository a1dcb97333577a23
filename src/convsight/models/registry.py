"""The names ``load_model`` knows: seed networks, torchvision classifiers, model file kinds,
and the sources ``convsight models`` lists."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.models.timm_source import TIMM_PREFIX, timm_installed, timm_names

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


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


def torchvision_models() -> list[str]:
    """Names of torchvision's image classification models."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models() -> list[str]:
    """Every model name ``load_model`` accepts (besides checkpoint paths)."""
    return list(SEEDS) + torchvision_models()


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


FILE_KINDS = {
    ".pt": "checkpoint",
    ".pth": "checkpoint",
    ".safetensors": "checkpoint",
    ".ts": "torchscript",
    ".onnx": "onnx",
    ".keras": "keras",
}
"""What a model file is, by its suffix (another file is read as a checkpoint)."""


# kind -> (module, loader function, what needs the extra, extra, the extra's packages)
MODEL_FILES: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "onnx": (
        "convsight.models.onnx_file",
        "load_onnx",
        "reading .onnx files",
        "onnx",
        ("onnx", "onnx2torch", "onnxruntime"),
    ),
    "keras": (
        "convsight.models.keras_file",
        "load_keras",
        "reading .keras files",
        "keras",
        ("keras",),
    ),
}


ARCH_HELP = (
    "a torchvision name, timm:NAME, a seed network, or your nn.Module class as "
    "FILE.py:ClassName or package.module:ClassName"
)


@dataclass(frozen=True)
class Source:
    """One kind of model ``load_model`` takes: how to name it and what it needs."""

    kind: str
    spec: str
    models: int | None
    note: str


def model_sources() -> list[Source]:
    """The sources of models, with the number of names each knows (None: files, or timm
    not installed)."""

    def extra(extra: str, packages: tuple[str, ...]) -> str:
        found = all(importlib.util.find_spec(p) is not None for p in packages)
        return "" if found else f"; needs pip install 'convsight[{extra}]'"

    timm_count = len(timm_names()) if timm_installed() else None
    return [
        Source(
            "seed", ", ".join(SEEDS), len(SEEDS), "the study's networks, untrained unless --weights"
        ),
        Source(
            "torchvision",
            "NAME (vgg16, resnet50, ...)",
            len(torchvision_models()),
            "ImageNet weights downloaded on first use; offline --weights FILE",
        ),
        Source(
            "timm",
            "timm:NAME (timm:convnext_atto, ...)",
            timm_count,
            "card from timm's pretrained_cfg; weights downloaded on first use; offline "
            "--weights FILE (.pt or .safetensors)" + extra("timm", ("timm",)),
        ),
        Source(
            "checkpoint",
            "FILE.pt, FILE.pth, FILE.safetensors",
            None,
            "a state dict with its card FILE.json beside it (`convsight card` writes one), "
            "or NAME --weights FILE" + extra("safetensors", ("safetensors",)),
        ),
        Source(
            "your class",
            "FILE.pt --arch net.py:ClassName (or package.module:ClassName)",
            None,
            "your nn.Module class and its state dict; --arch-args JSON for its constructor; "
            "`convsight card` records both",
        ),
        Source(
            "TorchScript",
            "FILE.ts",
            None,
            "card beside it or --input-size ...; whole-model methods only (no layer hooks)",
        ),
        Source(
            "ONNX",
            "FILE.onnx",
            None,
            "converted to PyTorch" + extra("onnx", MODEL_FILES["onnx"][4]),
        ),
        Source(
            "Keras",
            "FILE.keras",
            None,
            "Keras 3, converted to PyTorch" + extra("keras", ("keras",)),
        ),
    ]


def torchvision_card(name: str, weights: Any | None = None) -> ModelCard:
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


def is_model_name(spec: str) -> bool:
    return spec.startswith(TIMM_PREFIX) or spec in SEEDS or spec in torchvision_models()


def arch_of(spec: str) -> str:
    """The card ``arch`` of a model name: ``convsight:``, ``torchvision:`` or ``timm:``."""
    if spec.startswith(TIMM_PREFIX):
        return spec
    return f"convsight:{spec}" if spec in SEEDS else f"torchvision:{spec}"
