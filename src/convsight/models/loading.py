"""load_model(spec): a model of one of the sources (:data:`convsight.models.sources.SOURCES`),
and make_card, the card of a weights or model file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.models.model import Model
from convsight.models.python_class import FORMS, card_arch, card_beside
from convsight.models.source import FileSource, LoadRequest
from convsight.models.sources import (
    ARCH_HELP,
    CHECKPOINT,
    YOUR_CLASS,
    arch_of,
    file_source,
    is_model_name,
    list_models,
    named_source,
    names_file,
)
from convsight.models.timm_source import TIMM_PREFIX, timm_installed
from convsight.paths import require_file


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
    path = Path(weights) if weights is not None else None
    request = LoadRequest(str(spec), path, card, options, dict(card_fields or {}))
    model = _load_model(request, beside=True)
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
    source = file_source(path)
    fields = {"name": path.stem, **(card_fields or {})}
    if source is not CHECKPOINT:
        if (arch and arch != source.arch) or "arch_options" in fields:
            raise _carries_architecture(path, source)
        model = _load_model(LoadRequest(str(path), fields=fields), beside=False)
    elif not arch:
        raise ConvsightError(f"give the architecture of {path} with --arch ({ARCH_HELP})")
    else:
        recorded = card_arch(arch, path.parent) if YOUR_CLASS.matches(arch) else None
        model = _load_model(LoadRequest(str(path), fields={**fields, "arch": arch}), beside=False)
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


def _load_model(request: LoadRequest, beside: bool) -> Model:
    """``load_model`` without the final card check; ``beside``: read the card beside a file."""
    if "arch" in request.fields or "arch_options" in request.fields:
        return _with_arch(request, beside)
    spec, weights, card, fields = request.spec, request.weights, request.card, request.fields
    path = Path(spec)
    named = True  # spec is a model name, not the file itself
    if weights is None and not is_model_name(spec):
        if names_file(spec) or path.is_file():
            weights, named = path, False
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
    file = file_source(weights) if weights is not None else CHECKPOINT
    if file is not CHECKPOINT:  # a file that carries its architecture
        return file.load(str(weights), card=card, **({} if card is not None else fields))
    if card is not None or not named:  # a checkpoint: its card names the architecture
        return CHECKPOINT.load(spec, weights, card=card, options=request.options)
    source = named_source(spec)
    if source is not None:
        return source.load(spec, weights, options=request.options, **fields)
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


def _carries_architecture(path: Path, source: FileSource) -> ConvsightError:
    """The refusal of ``--arch`` / ``--arch-args`` for a file that carries its architecture."""
    return ConvsightError(
        f"{path} is a {source.arch} file, which carries its own architecture: leave out --arch and "
        "--arch-args"
    )


def _with_arch(request: LoadRequest, beside: bool) -> Model:
    """A checkpoint given as the model with ``--arch`` / ``--arch-args`` (``arch`` and
    ``arch_options`` in the card fields): a registry's architecture loads as ``ARCH --weights
    FILE``; a Python class (and its keywords) replaces the class of the card beside it."""
    spec, card, fields = request.spec, request.card, dict(request.fields)
    arch, arch_options = fields.pop("arch", None), fields.pop("arch_options", None)
    if request.weights is not None or is_model_name(spec):
        raise ConvsightError(
            f"--arch and --arch-args say the architecture of a checkpoint given as the model "
            f"(convsight layers FILE.pt --arch ...); '{spec}' names one already: leave them out"
        )
    path = require_file(spec, "model file")
    source = file_source(path)
    if source is not CHECKPOINT:
        raise _carries_architecture(path, source)
    if arch is not None and not YOUR_CLASS.matches(arch):
        if arch_options is not None:
            raise ConvsightError(
                f"--arch-args gives the constructor keywords of a Python class ({FORMS}), "
                f"not of '{arch}'"
            )
        named = LoadRequest(_registry_name(arch), path, card, request.options, fields)
        return _load_model(named, beside)
    if card is None and beside:
        card = card_beside(path, check_code=arch is None)
    return YOUR_CLASS.load(spec, path, card=card, arch=arch, arch_options=arch_options, **fields)
