"""Every source of models, once: :data:`SOURCES`, which ``load_model``, ``convsight models``,
:func:`list_models` and the help texts read. Checkpoints and your own classes are loaded
here, as they build the architecture a card names with the source that card names."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard, card_path
from convsight.models.checkpoints import load_weights, read_state_dict
from convsight.models.file_sources import KERAS, ONNX, TORCHSCRIPT
from convsight.models.model import Model
from convsight.models.python_class import (
    CLASS_HEAD,
    FORMS,
    PREFIX,
    absolute_arch,
    build_module,
    class_checkpoint,
)
from convsight.models.seed_source import SEED
from convsight.models.source import FileSource, LoadRequest, NamedSource, Source
from convsight.models.timm_source import TIMM
from convsight.models.torchvision_source import TORCHVISION


class CheckpointSource(FileSource):
    """State dicts with the card that names their architecture (beside them or given)."""

    def open(self, request: LoadRequest) -> Model:
        """The architecture the card names (with the seed options), loaded with the weights.
        Without a card, one sentence says how to write one."""
        card, weights = request.card, request.weights
        if card is None:
            path = weights if weights is not None else Path(request.spec)
            raise ConvsightError(
                f"checkpoint {path} has no card beside it ({card_path(path).name}), so its "
                f"architecture and input are unknown: write one with `convsight card {path} "
                f"--arch ARCH` (ARCH: {ARCH_HELP}; add --input-size, --mean, --std, --labels "
                f"where they differ from ARCH's), or give ARCH as the model with --weights {path}"
            )
        if request.options:
            card.arch_options = {**card.arch_options, **request.options}
        return from_card(card, weights, request.spec)


class ClassSource(Source):
    """Your ``nn.Module`` class (named by ``--arch`` or a card) and its state dict."""

    def matches(self, spec: str) -> bool:
        """Whether an ``--arch`` value names a Python class (``python:...``, ``FILE.py:Class``,
        ``package.module:Class``) rather than a model of another source (``timm:NAME``)."""
        if spec.startswith(PREFIX):
            return True
        target, sep, _ = spec.rpartition(":")
        if spec.partition(":")[0] in {s.arch for s in SOURCES if s.arch} - {self.arch}:
            return False
        return spec.endswith(".py") or bool(sep and target)

    def open(self, request: LoadRequest) -> Model:
        """The checkpoint (given as the spec) of the class that ``arch`` in the card fields
        names, else the card's; ``arch_options`` in them: its constructor keywords."""
        card, spec, fields = request.card, request.spec, dict(request.fields)
        path = Path(spec) if request.weights is None else request.weights
        arch, arch_options = fields.pop("arch", None), fields.pop("arch_options", None)
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
        return from_card(card.updated(**fields) if fields else card, path, spec)

    def build(self, card: ModelCard, folder: Path) -> nn.Module | None:
        """An instance of the class ``card`` names, with its ``arch_options``."""
        return build_module(card.arch, card.arch_options, folder)


def from_card(card: ModelCard, weights: Path | None, spec: str) -> Model:
    """The architecture ``card`` names, built by its source and loaded with ``weights`` (a
    relative file of a Python class lives beside them)."""
    kind = card.arch.partition(":")[0]
    folder = weights.parent if weights is not None else Path.cwd()
    source = next((s for s in SOURCES if s.arch == kind), None)
    module = source.build(card, folder) if source is not None else None
    if source is None or module is None:
        raise ConvsightError(f"model card for '{spec}' names an unknown architecture '{card.arch}'")
    if weights is not None:
        state = read_state_dict(weights)
        load_weights(module, state, weights, card.features_only, source.head_flag)
    if card.features_only:
        # Only the convolution stack has weights: drop the head so nothing random is used.
        for head in ("avgpool", "classifier", "fc"):
            if hasattr(module, head):
                setattr(module, head, nn.Identity())
    return Model(module, card)


CHECKPOINT = CheckpointSource(
    name="checkpoint",
    spec="FILE.pt, FILE.pth, FILE.safetensors",
    note="a state dict with its card FILE.json beside it (`convsight card` writes one), "
    "or NAME --weights FILE",
    extra="safetensors",
    packages=("safetensors",),
    suffixes=(".pt", ".pth", ".safetensors"),
)
YOUR_CLASS = ClassSource(
    name="your class",
    spec="FILE.pt --arch net.py:ClassName (or package.module:ClassName)",
    note="your nn.Module class and its state dict; --arch-args JSON for its constructor; "
    "`convsight card` records both",
    arch=PREFIX.rstrip(":"),
    arch_help=f"your nn.Module class as {FORMS}",
    head_flag=CLASS_HEAD,
)

SOURCES: tuple[Source, ...] = (
    SEED,
    TORCHVISION,
    TIMM,
    CHECKPOINT,
    YOUR_CLASS,
    TORCHSCRIPT,
    ONNX,
    KERAS,
)
"""Every source of models, in the order ``convsight models`` lists them."""

ARCH_HELP = (
    f"{TORCHVISION.arch_help}, {TIMM.arch_help}, {SEED.arch_help}, or {YOUR_CLASS.arch_help}"
)
"""The architectures ``--arch`` names (a checkpoint's without a card)."""


def model_sources() -> tuple[Source, ...]:
    """The sources of models, in the order ``convsight models`` lists them."""
    return SOURCES


def list_models() -> list[str]:
    """Every model name ``load_model`` knows by heart (seed networks, torchvision's; timm's
    are ``timm:NAME``)."""
    return [name for source in SOURCES for name in source.names()]


def named_source(spec: str) -> NamedSource | None:
    """The source of the model name ``spec`` (None: it names no model)."""
    named = (s for s in SOURCES if isinstance(s, NamedSource) and s.matches(spec))
    return next(named, None)


def is_model_name(spec: str) -> bool:
    """Whether ``spec`` names a model of a source (not a file)."""
    return named_source(spec) is not None


def arch_of(spec: str) -> str:
    """The card ``arch`` of a model name: ``convsight:``, ``torchvision:`` or ``timm:``."""
    source = named_source(spec) or TORCHVISION
    prefix = f"{source.arch}:"
    return spec if spec.startswith(prefix) else prefix + spec


def names_file(spec: str | os.PathLike) -> bool:
    """Whether ``spec``'s suffix is that of a model file (``.pt``, ``.onnx``...)."""
    return any(isinstance(s, FileSource) and s.matches(str(spec)) for s in SOURCES)


def file_source(path: str | os.PathLike) -> FileSource:
    """The source of a model file, by its suffix (another file is read as a checkpoint)."""
    files = (s for s in SOURCES if isinstance(s, FileSource) and s.matches(str(path)))
    return next(files, CHECKPOINT)
