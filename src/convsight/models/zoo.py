"""load_model(spec): seed networks, torchvision and timm classifiers, checkpoints, model files."""

from __future__ import annotations

import difflib
import importlib.util
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    card_path,
    identity_normalization,
    warn_no_normalization,
)
from convsight.models.extras import import_extra, is_missing, missing_extra
from convsight.models.model import Model
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.models.timm_source import (
    TIMM_PREFIX,
    build_timm,
    download_timm,
    timm_card,
    timm_installed,
    timm_names,
)
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
ARCH_HELP = "a torchvision name, timm:NAME or a seed network"


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: ``.safetensors`` with safetensors (no pickle at
    all), anything else with ``torch.load(weights_only=True)``."""
    path = Path(path)
    require_file(path, "weights file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors = import_extra("safetensors.torch", "reading .safetensors files", "safetensors")
    try:
        data = safetensors.load_file(str(path), device="cpu")
    except PermissionError as exc:
        raise ConvsightError(f"cannot read safetensors file {path}: permission denied") from exc
    except Exception as exc:  # SafetensorError, or an OSError of the file
        raise ConvsightError(
            f"cannot read safetensors file {path}: {_first_line(exc)} (or it is not one)"
        ) from exc
    if not data:
        raise ConvsightError(f"safetensors file {path} holds no tensors")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _last_linear(module: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` (a classifier's head), if any."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _head_outputs(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of ``module``'s head as ``state`` gives its weight (None: not in it)."""
    head = _last_linear(module)
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _input_channels(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of ``module``'s first convolution as ``state`` gives its weight."""
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    weight = state.get(f"{convs[0]}.weight") if convs else None
    if weight is None or weight.ndim != 4 or module.get_submodule(convs[0]).groups != 1:
        return None
    return int(weight.shape[1])


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
            classes = _head_outputs(module, state)
            if classes is not None and classes != _head_outputs(module, expected):
                parts.append(
                    f"their head has {classes} classes: give --num-classes {classes} "
                    "(num_classes in a card)"
                )
        raise ConvsightError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=not features_only)


Build = Callable[[int | None, int | None], tuple[nn.Module, ModelCard]]
"""``build(num_classes, channels)`` -> module and card (None: the architecture's default)."""


def _fit_to_weights(
    build: Build, state: Mapping[str, torch.Tensor] | None, fields: Mapping[str, Any]
) -> tuple[nn.Module, ModelCard]:
    """Build the module; unless ``fields`` say them, its class count follows the head's shape
    in ``state`` and its input channels the first convolution's (rebuilt when they differ)."""
    given = (fields.get("num_classes"), fields.get("channels"))
    module, card = build(*given)
    if state is None:
        return module, card
    own = module.state_dict()
    have = (_head_outputs(module, own), _input_channels(module, own))
    found = (_head_outputs(module, state), _input_channels(module, state))
    wanted = tuple(g or f or h for g, f, h in zip(given, found, have, strict=True))
    if wanted != have:
        module, card = build(*wanted)
    return module, card


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
    classes = None if card.features_only else card.num_classes
    if kind == "convsight" and arch in SEEDS:
        module, _ = build_seed(arch, card.arch_options)
    elif kind == "torchvision" and arch in torchvision_models():
        module = _torchvision(arch, classes)
    elif kind == "timm" and not card.features_only:
        module = build_timm(arch, classes, card.channels)
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


def _fields_card(path: Path, arch: str, fields: Mapping[str, Any]) -> ModelCard:
    """A card built from the fields given alone (identity normalization when no mean/std)."""
    channels = fields.get("channels", 3)
    return ModelCard(
        **{
            "name": path.stem,
            "arch": arch,
            "channels": channels,
            "source": f"{path.name}, card from the command line",
            **identity_normalization(channels, path.stem, {"mean", "std"} - set(fields)),
            **fields,
        }
    )


def _torchscript(path: Path, card: ModelCard | None, fields: Mapping[str, Any]) -> Model:
    if card is None and "input_size" not in fields:
        raise ConvsightError(
            f"TorchScript model {path} has no card beside it ({card_path(path).name}), so its "
            "input size and normalization are unknown: give --input-size HxW (and --mean, "
            f"--std), or write a card with `convsight card {path} --input-size HxW --mean M "
            "--std S`"
        )
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of export
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConvsightError(f"cannot read TorchScript model {path}: {_first_line(exc)}") from exc
    model = Model(module, card or _fields_card(path, "torchscript", fields))
    model.probe_classes()
    return model


def _model_file(kind: str, path: Path, card: ModelCard | None, fields: Mapping[str, Any]) -> Model:
    """An ONNX or Keras file through its converter (an optional extra, imported here)."""
    module, function, what, extra, packages = MODEL_FILES[kind]
    load = getattr(import_extra(module, what, extra, packages), function)
    if card is None and "input_size" in fields:
        card = _fields_card(path, kind, fields)
        fields = {}
    try:
        model = load(path, card)
    except ImportError as exc:
        if is_missing(exc, *packages):
            raise missing_extra(what, extra) from exc
        raise
    if fields:
        model.card = model.card.updated(**fields)
    if card is None:  # the converter's own card: identity normalization is a guess
        unset = {"mean": set(model.card.mean) == {0.0}, "std": set(model.card.std) == {1.0}}
        warn_no_normalization(
            model.card.name, [k for k, v in unset.items() if v and k not in fields]
        )
    model.probe_classes()
    return model


def _seed(spec: str, weights: Path | None, fields: Mapping[str, Any], options: dict) -> Model:
    accepted = SEEDS[spec][2]

    def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
        given = {"num_classes": num_classes, "channels": channels}
        return build_seed(
            spec, {**options, **{k: v for k, v in given.items() if v and k in accepted}}
        )

    return _with_weights(build, weights, fields)


def _torchvision_model(spec: str, weights: Path | None, fields: Mapping[str, Any]) -> Model:
    if weights is None:
        model = _download_torchvision(spec)
        if fields:
            model.card = model.card.updated(**fields)
        return model

    def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
        card = torchvision_card(spec)
        if num_classes and num_classes != card.num_classes:
            card = card.updated(num_classes=num_classes)
        return _torchvision(spec, num_classes), card

    return _with_weights(build, weights, fields)


def _timm(name: str, weights: Path | None, fields: Mapping[str, Any]) -> Model:
    if weights is None:
        module = download_timm(name)
        model = Model(module, timm_card(name, module))
        if fields:
            model.card = model.card.updated(**fields)
        return model

    def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
        module = build_timm(name, num_classes, channels)
        return module, timm_card(name, module, channels or 3)

    return _with_weights(build, weights, fields)


def _with_weights(build: Build, weights: Path | None, fields: Mapping[str, Any]) -> Model:
    """The module ``build`` makes, fitted to and loaded with ``weights`` (if any), and its
    card with the ``fields`` given."""
    state = read_state_dict(weights) if weights is not None else None
    module, card = _fit_to_weights(build, state, fields)
    if state is not None:
        _load_weights(module, state, weights, False)
        card.source = f"weights {weights} ({card.arch})"
    return Model(module, card.updated(**fields) if fields else card)


def _is_name(spec: str) -> bool:
    return spec.startswith(TIMM_PREFIX) or spec in SEEDS or spec in torchvision_models()


def _arch_of(spec: str) -> str:
    """The card ``arch`` of a model name: ``convsight:``, ``torchvision:`` or ``timm:``."""
    if spec.startswith(TIMM_PREFIX):
        return spec
    return f"convsight:{spec}" if spec in SEEDS else f"torchvision:{spec}"


def load_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    card: ModelCard | None = None,
    card_fields: Mapping[str, Any] | None = None,
    **options: Any,
) -> Model:
    """A Model from a name (seed network, torchvision classifier, ``timm:NAME``) or a file.

    Files: a checkpoint (``.pt``, ``.pth``, ``.safetensors``) with its card beside it (same
    stem, ``.json``), a TorchScript ``.ts``, an ``.onnx`` or a Keras 3 ``.keras`` file.
    ``weights`` is a local state dict for a model name (``.pt`` read with
    ``weights_only=True``, ``.safetensors`` without pickle); a card beside it must name the
    same architecture. Without it, the card (and the class count and input channels) follow
    the architecture's defaults and the shapes of the weights (a replaced head has its own
    class count). Without weights, torchvision and timm download their pretrained ones and a
    seed network is untrained. ``card`` replaces the card beside the file; ``card_fields``
    (``input_size``, ``channels``, ``mean``, ``std``, ``labels``, ``num_classes``...) replace
    those of whichever card applies, or make one for a file that has none. ``options`` are
    architecture options of a seed network (``stride=1``...). The card is checked against the
    module (one forward pass of its example input) before returning.
    """
    model = _load_model(str(spec), weights, card, dict(card_fields or {}), options, beside=True)
    model.check_card()
    return model


def make_card(
    weights: str | os.PathLike,
    arch: str | None = None,
    card_fields: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of a weights or model file: ``arch``'s defaults (and the shapes of the
    weights) with the ``card_fields`` given, checked by loading the file with it. A card
    already beside the file is not read. ``arch``: a model name, ``torchvision:NAME`` or
    ``convsight:NAME``; none for a TorchScript, ONNX or Keras file."""
    path = require_file(weights, "weights file")
    kind = FILE_KINDS.get(path.suffix.lower(), "checkpoint")
    fields = {"name": path.stem, **(card_fields or {})}
    if kind != "checkpoint":
        if arch and arch != kind:
            raise ConvsightError(
                f"{path} is a {kind} file, which carries its own architecture: leave out --arch"
            )
        model = _load_model(str(path), None, None, fields, {}, beside=False)
    elif not arch:
        raise ConvsightError(f"give the architecture of {path} with --arch ({ARCH_HELP})")
    else:
        kind, _, name = arch.partition(":")
        spec = name if kind in ("convsight", "torchvision") and name else arch
        if not _is_name(spec):
            raise ConvsightError(
                f"unknown architecture '{arch}' ({ARCH_HELP}; `convsight models` lists them)"
            )
        model = _load_model(spec, path, None, fields, {}, beside=False)
    model.check_card()
    return model.card


def _load_model(
    spec: str,
    weights: str | os.PathLike | None,
    card: ModelCard | None,
    fields: dict[str, Any],
    options: dict[str, Any],
    beside: bool,
) -> Model:
    """``load_model`` without the final card check; ``beside``: read the card beside a file."""
    path = Path(spec)
    named = True  # spec is a model name, not the file itself
    if weights is None and not _is_name(spec):
        if path.suffix.lower() in FILE_KINDS or path.is_file():
            weights, named = path, False
    weights = Path(weights) if weights is not None else None
    if weights is not None:
        require_file(weights, "weights file" if named else "model file")
    if card is None and beside and weights is not None and card_path(weights).is_file():
        card = ModelCard.read(card_path(weights))
    if card is not None and named and _is_name(spec) and card.arch != _arch_of(spec):
        given = f"weights {weights} come with a card that" if weights else "the card given"
        raise ConvsightError(
            f"{given} names another architecture ({card.arch}), not '{spec}'; "
            "give the checkpoint path alone to load the model its card names"
        )
    if card is not None and fields:
        card = card.updated(**fields)
    kind = FILE_KINDS.get(weights.suffix.lower(), "checkpoint") if weights else None
    if kind == "torchscript":
        return _torchscript(weights, card, fields)
    if kind in MODEL_FILES:
        return _model_file(kind, weights, card, {} if card is not None else fields)
    if card is not None:
        if options:
            card.arch_options = {**card.arch_options, **options}
        return _from_card(card, weights, spec)
    if spec.startswith(TIMM_PREFIX):
        return _timm(spec[len(TIMM_PREFIX) :], weights, fields)
    if spec in SEEDS:
        return _seed(spec, weights, fields, options)
    if spec in torchvision_models():
        return _torchvision_model(spec, weights, fields)
    if not named:
        raise ConvsightError(
            f"checkpoint {weights} has no card beside it ({card_path(weights).name}), so its "
            f"architecture and input are unknown: write one with `convsight card {weights} "
            f"--arch ARCH` (ARCH: {ARCH_HELP}; add --input-size, --mean, --std, --labels "
            f"where they differ from ARCH's), or give ARCH as the model with --weights {weights}"
        )
    if path.is_dir():
        raise ConvsightError(
            f"model {spec} is a folder, not a model name or checkpoint file "
            "(give the .pt file inside it)"
        )
    if path.suffix:
        raise ConvsightError(f"weights file {spec} does not exist")
    raise ConvsightError(f"unknown model '{spec}' (`convsight models` lists them){_near(spec)}")


def _near(spec: str) -> str:
    """A hint of the nearest model names (a timm name gets its ``timm:`` form)."""
    if timm_installed() and spec:
        import timm

        if timm.is_model(spec):
            return f"; did you mean {TIMM_PREFIX}{spec}?"
    close = difflib.get_close_matches(spec, list_models(), n=4, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


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
