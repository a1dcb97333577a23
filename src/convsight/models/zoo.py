"""load_model(spec): seed networks, torchvision and timm classifiers, checkpoints, model files."""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import (
    ModelCard,
    card_path,
    identity_normalization,
    warn_no_normalization,
)
from convsight.models.checkpoints import (
    HEAD_FLAG,
    Build,
    first_line,
    fit_to_weights,
    load_weights,
    read_state_dict,
    replace_head,
)
from convsight.models.extras import import_extra, is_missing, missing_extra
from convsight.models.model import Model
from convsight.models.python_class import (
    CLASS_HEAD,
    FORMS,
    PREFIX,
    absolute_arch,
    build_module,
    card_arch,
    card_beside,
    class_checkpoint,
    names_class,
)
from convsight.models.registry import (
    ARCH_HELP,
    FILE_KINDS,
    MODEL_FILES,
    SEEDS,
    arch_of,
    build_seed,
    is_model_name,
    list_models,
    model_sources,
    torchvision_card,
    torchvision_models,
)
from convsight.models.timm_source import (
    TIMM_PREFIX,
    build_timm,
    download_timm,
    timm_card,
    timm_installed,
)
from convsight.paths import require_file

__all__ = [  # the loading functions, and the names other modules import from here
    "SEEDS",
    "build_seed",
    "list_models",
    "load_model",
    "make_card",
    "model_sources",
    "read_state_dict",
    "replace_head",
    "torchvision_card",
    "torchvision_models",
]


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision.models as tvm

    kwargs = {"num_classes": num_classes} if num_classes else {}
    return tvm.get_model(name, weights=None, **kwargs)


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
    head_flag = HEAD_FLAG
    if kind == "python":  # a relative file lives beside the card (and the weights)
        folder = weights.parent if weights is not None else Path.cwd()
        module, head_flag = build_module(card.arch, card.arch_options, folder), CLASS_HEAD
    elif kind == "convsight" and arch in SEEDS:
        module, _ = build_seed(arch, card.arch_options)
    elif kind == "torchvision" and arch in torchvision_models():
        module = _torchvision(arch, classes)
    elif kind == "timm" and not card.features_only:
        module = build_timm(arch, classes, card.channels)
    else:
        raise ConvsightError(f"model card for '{spec}' names an unknown architecture '{card.arch}'")
    if weights is not None:
        load_weights(module, read_state_dict(weights), weights, card.features_only, head_flag)
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
        raise ConvsightError(f"cannot read TorchScript model {path}: {first_line(exc)}") from exc
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
    chosen = {"output": fields["output"]} if card is None and "output" in fields else {}
    try:
        model = load(path, card, **chosen)
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
    module, card = fit_to_weights(build, state, fields)
    if state is not None:
        load_weights(module, state, weights, False)
        card.source = f"weights {weights} ({card.arch})"
    return Model(module, card.updated(**fields) if fields else card)


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
    those of whichever card applies, or make one for a file that has none; their ``arch`` and
    ``arch_options`` say the architecture of a checkpoint given as ``spec`` (a registry's, or
    a Python class and its constructor keywords, as :func:`make_card` takes). ``options`` are
    architecture options of a seed network (``stride=1``...). The card is checked against the
    module (one forward pass of its example input) before returning.
    """
    fields = dict(card_fields or {})
    load = _with_arch if "arch" in fields or "arch_options" in fields else _load_model
    model = load(str(spec), weights, card, fields, options, beside=True)
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
    ``convsight:NAME``, a Python class (``FILE.py:Class``, recorded relative to the card's
    folder, or ``package.module:Class``; its keywords as ``arch_options`` in ``card_fields``);
    none for a TorchScript, ONNX or Keras file."""
    path = require_file(weights, "weights file")
    kind = FILE_KINDS.get(path.suffix.lower(), "checkpoint")
    fields = {"name": path.stem, **(card_fields or {})}
    if kind != "checkpoint":
        if (arch and arch != kind) or "arch_options" in fields:
            raise _carries_architecture(path, kind)
        model = _load_model(str(path), None, None, fields, {}, beside=False)
    elif not arch:
        raise ConvsightError(f"give the architecture of {path} with --arch ({ARCH_HELP})")
    else:
        recorded = card_arch(arch, path.parent) if names_class(arch) else None
        model = _with_arch(str(path), None, None, {**fields, "arch": arch}, {}, beside=False)
        if recorded is not None:  # a file relative to the card's folder, which travels with it
            model.card.arch, model.card.source = recorded, f"weights {path.name} ({recorded})"
    model.check_card()
    return model.card


def _registry_name(arch: str) -> str:
    """The model name of a registry's ``arch`` (``torchvision:vgg16`` -> ``vgg16``)."""
    kind, _, name = arch.partition(":")
    spec = name if kind in ("convsight", "torchvision") and name else arch
    if not is_model_name(spec):
        raise ConvsightError(
            f"unknown architecture '{arch}' ({ARCH_HELP}; `convsight models` lists them)"
        )
    return spec


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
    if weights is None and not is_model_name(spec):
        if path.suffix.lower() in FILE_KINDS or path.is_file():
            weights, named = path, False
    weights = Path(weights) if weights is not None else None
    if weights is not None:
        require_file(weights, "weights file" if named else "model file")
    if card is None and beside and weights is not None:
        card = card_beside(weights, check_code=True)
    if card is not None and named and is_model_name(spec) and card.arch != arch_of(spec):
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


def _carries_architecture(path: Path, kind: str) -> ConvsightError:
    """The refusal of ``--arch`` / ``--arch-args`` for a file that carries its architecture."""
    return ConvsightError(
        f"{path} is a {kind} file, which carries its own architecture: leave out --arch and "
        "--arch-args"
    )


def _with_arch(
    spec: str,
    weights: str | os.PathLike | None,
    card: ModelCard | None,
    fields: dict[str, Any],
    options: dict[str, Any],
    beside: bool,
) -> Model:
    """A checkpoint given as the model with ``--arch`` / ``--arch-args`` (``arch`` and
    ``arch_options`` in ``fields``): a registry's architecture loads as ``ARCH --weights
    FILE``; a Python class (and its keywords) replaces the class of the card beside it."""
    fields = dict(fields)
    arch, arch_options = fields.pop("arch", None), fields.pop("arch_options", None)
    if weights is not None or is_model_name(spec):
        raise ConvsightError(
            f"--arch and --arch-args say the architecture of a checkpoint given as the model "
            f"(convsight layers FILE.pt --arch ...); '{spec}' names one already: leave them out"
        )
    path = require_file(spec, "model file")
    kind = FILE_KINDS.get(path.suffix.lower(), "checkpoint")
    if kind != "checkpoint":
        raise _carries_architecture(path, kind)
    if arch is not None and not names_class(arch):
        if arch_options is not None:
            raise ConvsightError(
                f"--arch-args gives the constructor keywords of a Python class ({FORMS}), "
                f"not of '{arch}'"
            )
        return _load_model(_registry_name(arch), path, card, fields, options, beside)
    if card is None and beside:
        card = card_beside(path, check_code=arch is None)
    if arch is None:
        if card is None or not card.arch.startswith(PREFIX):
            named = f"its card names {card.arch}" if card else "it has no card"
            raise ConvsightError(
                f"--arch-args gives the constructor keywords of a Python class, but {path} "
                f"names none ({named}): give the class with --arch {FORMS}"
            )
        arch = card.arch
    else:
        arch = absolute_arch(arch)
    if arch_options is None:
        arch_options = card.arch_options if card is not None else {}
    if card is None:
        return class_checkpoint(path, arch, arch_options, fields)
    card = dataclasses.replace(card, arch=arch, arch_options=arch_options)
    return _from_card(card.updated(**fields) if fields else card, path, spec)
