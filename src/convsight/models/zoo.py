"""load_model(spec): the seed networks, any torchvision classifier, a local checkpoint."""

from __future__ import annotations

import difflib
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, card_path
from convsight.models.model import Model
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.paths import require_file

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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, read with ``weights_only=True``."""
    path = Path(path)
    require_file(path, "weights file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it half reads
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise ConvsightError(f"cannot read checkpoint {path}: permission denied") from exc
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a pickle of tensors at all
            raise ConvsightError(
                f"cannot read checkpoint {path}: it is not a PyTorch state dict file "
                "(or it is corrupt)"
            ) from exc
        raise ConvsightError(
            f"checkpoint {path} contains code or objects convsight will not load (only "
            "tensors are read, weights_only=True); re-save its state dict with "
            "torch.save(model.state_dict(), ...)"
        ) from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise ConvsightError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConvsightError(f"checkpoint {path} does not hold a state dict of tensors")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _load_weights(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, features_only: bool
) -> None:
    expected = module.state_dict()
    if features_only:
        prefix = "features."
        expected = {k: v for k, v in expected.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
            )
        raise ConvsightError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=not features_only)


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision.models as tvm

    kwargs = {"num_classes": num_classes} if num_classes else {}
    return tvm.get_model(name, weights=None, **kwargs)


def torchvision_card(name: str, weights: Any | None = None) -> ModelCard:
    import torchvision.models as tvm

    weights = weights or tvm.get_model_weights(name).DEFAULT
    preprocess = weights.transforms()
    crop = int(getattr(preprocess, "crop_size", [224])[0])
    resize = int(getattr(preprocess, "resize_size", [256])[0])
    return ModelCard(
        name=name,
        arch=f"torchvision:{name}",
        input_size=(crop, crop),
        channels=3,
        mean=tuple(getattr(preprocess, "mean", IMAGENET_MEAN)),
        std=tuple(getattr(preprocess, "std", IMAGENET_STD)),
        labels=list(weights.meta["categories"]),
        resize=resize,
        source=f"torchvision {name} {weights}",
    )


def _download_torchvision(name: str) -> Model:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    try:
        module = tvm.get_model(name, weights=weights)
    except OSError as exc:  # URLError is an OSError
        raise ConvsightError(
            f"could not download the pretrained weights of '{name}' ({exc}); "
            f"offline, pass a local state dict with --weights FILE"
        ) from exc
    return Model(module, torchvision_card(name, weights))


def _from_card(card: ModelCard, weights: Path | None, spec: str) -> Model:
    kind, _, arch = card.arch.partition(":")
    if kind == "convsight" and arch in SEEDS:
        module, _ = build_seed(arch, card.arch_options)
    elif kind == "torchvision" and arch in torchvision_models():
        module = _torchvision(arch, None if card.features_only else card.num_classes)
    else:
        raise ConvsightError(f"model card for '{spec}' names an unknown architecture '{card.arch}'")
    if weights is not None:
        _load_weights(module, read_state_dict(weights), weights, card.features_only)
    if card.features_only:
        # Only the convolution stack has weights: drop the head so nothing random is used.
        for head in ("avgpool", "classifier", "fc"):
            if hasattr(module, head):
                setattr(module, head, nn.Identity())
    return Model(module, card)


def _torchscript(path: Path, card: ModelCard | None) -> Model:
    if card is None:
        raise ConvsightError(
            f"TorchScript model {path} has no card beside it ({card_path(path).name}); "
            "its input size and normalization are unknown"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConvsightError(f"cannot read TorchScript model {path}: {_first_line(exc)}") from exc
    return Model(module, card)


def load_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    card: ModelCard | None = None,
    **options: Any,
) -> Model:
    """A Model from a name (seed network or torchvision classifier) or a checkpoint path.

    ``weights`` is a local state dict (read with ``weights_only=True``); the card beside it
    (same stem, ``.json``) says its architecture, input and labels, and must name the same
    architecture as ``spec`` when ``spec`` is a model name. Without weights, a torchvision
    model downloads its default ImageNet weights; a seed network is untrained.
    ``options`` are architecture options of a seed network (``stride=1``...). The card is
    checked against the module (one forward pass of its example input) before returning.
    """
    spec = str(spec)
    path = Path(spec)
    named = True  # spec is a model name, not the checkpoint itself
    if weights is None and (path.suffix in {".pt", ".pth", ".ts"} or path.is_file()):
        weights, spec, named = path, path.stem, False
    weights = Path(weights) if weights is not None else None
    if weights is not None:
        require_file(weights, "weights file")
    if card is None and weights is not None and card_path(weights).is_file():
        card = ModelCard.read(card_path(weights))
    if card is not None and named and (spec in SEEDS or spec in torchvision_models()):
        _check_same_architecture(spec, card, weights)
    model = _load(spec, path, weights, card, options)
    model.check_card()
    return model


def _check_same_architecture(spec: str, card: ModelCard, weights: Path | None) -> None:
    kind, _, arch = card.arch.partition(":")
    if arch != spec or kind not in ("convsight", "torchvision"):
        given = f"weights {weights} come with a card that" if weights else "the card given"
        raise ConvsightError(
            f"{given} names another architecture ({card.arch}), not '{spec}'; "
            "give the checkpoint path alone to load the model its card names"
        )


def _load(
    spec: str,
    path: Path,
    weights: Path | None,
    card: ModelCard | None,
    options: dict[str, Any],
) -> Model:
    if weights is not None and weights.suffix == ".ts":
        return _torchscript(weights, card)
    if card is not None:
        if options:
            card.arch_options = {**card.arch_options, **options}
        return _from_card(card, weights, spec)
    if spec in SEEDS:
        module, seed_card = build_seed(spec, options)
        if weights is not None:
            _load_weights(module, read_state_dict(weights), weights, False)
            seed_card.source = f"weights {weights}"
        return Model(module, seed_card)
    if spec in torchvision_models():
        if weights is None:
            return _download_torchvision(spec)
        tv_card = torchvision_card(spec)
        tv_card.source = f"weights {weights}"
        return _from_card(tv_card, weights, spec)
    if weights is None and path.is_dir():
        raise ConvsightError(
            f"model {spec} is a folder, not a model name or checkpoint file "
            "(give the .pt file inside it)"
        )
    if weights is None and path.suffix:
        raise ConvsightError(f"weights file {spec} does not exist")
    close = difflib.get_close_matches(spec, list_models(), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConvsightError(f"unknown model '{spec}' (`convsight models` lists them){hint}")


def replace_head(module: nn.Module, num_classes: int) -> str:
    """Swap the last ``nn.Linear`` for a new one with ``num_classes`` outputs; return its name.

    The name is kept, so torchvision's ``get_model(name, num_classes=k)`` fits the new weights.
    """
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConvsightError("the model has no linear layer to replace with a new head")
    name, old = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return name
