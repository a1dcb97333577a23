"""The :class:`Source` type: one kind of model ``load_model`` takes (``convsight models`` lists
them in :data:`convsight.models.sources.SOURCES`), and what the sources share."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from convsight.models.card import ModelCard
from convsight.models.checkpoints import (
    HEAD_FLAG,
    Build,
    fit_to_weights,
    load_weights,
    read_state_dict,
)
from convsight.models.model import Model


@dataclass(frozen=True)
class LoadRequest:
    """What ``load_model`` asks of a source: the ``spec`` given, the weights or model file,
    the card that applies, a seed network's architecture options and the card fields given."""

    spec: str
    weights: Path | None = None
    card: ModelCard | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Source:
    """One kind of model ``load_model`` takes: its ``name``, how a spec names one (``spec``),
    what ``convsight models`` notes about it (:meth:`describe`), and the optional extra it
    needs. Subclasses say which specs are theirs (:meth:`matches`) and open what
    :meth:`load` asks for (:meth:`open`)."""

    name: str
    spec: str
    note: str
    arch: str | None = None
    """The kind in the card ``arch`` of its models (``torchvision`` in ``torchvision:vgg16``)."""
    arch_help: str = ""
    """How ``--arch`` names one of its architectures (empty: ``--arch`` names none)."""
    listable: bool = False
    """Whether ``convsight models --source NAME`` lists its names."""
    extra: str | None = None
    """The optional extra it needs (``pip install 'convsight[EXTRA]'``), and its packages."""
    packages: tuple[str, ...] = ()
    head_flag: str = HEAD_FLAG
    """How to give its architecture another class count (see ``load_weights``)."""

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` (a model name, a file or an ``--arch`` value) is this source's."""
        return False

    def load(
        self,
        spec: str,
        weights: Path | None = None,
        *,
        card: ModelCard | None = None,
        options: Mapping[str, Any] | None = None,
        **card_fields: Any,
    ) -> Model:
        """The model ``spec`` names (``weights``: a local state dict or the model file;
        ``card``: the card that applies; ``options``: a seed network's architecture options),
        with the ``card_fields`` given."""
        return self.open(LoadRequest(spec, weights, card, dict(options or {}), card_fields))

    def open(self, request: LoadRequest) -> Model:
        """The model ``request`` asks for (:meth:`load` with its arguments in one value)."""
        raise NotImplementedError(f"the source {self.name} opens no model by itself")

    def build(self, card: ModelCard, folder: Path) -> nn.Module | None:
        """An untrained module of the architecture ``card`` names (a relative file is read
        from ``folder``); None when this source cannot build it."""
        return None

    def names(self) -> list[str]:
        """The model names it knows, each one a spec (``list_models``)."""
        return []

    def listing(self) -> list[str]:
        """Every spec ``convsight models --source NAME`` prints."""
        return self.names()

    def count(self) -> int | None:
        """How many models it knows (None: it takes files, or its extra is missing)."""
        return len(self.listing()) if self.listable else None

    def describe(self) -> str:
        """What ``convsight models`` notes about it, with the extra to install when missing."""
        if self.extra is None or all(
            importlib.util.find_spec(p) is not None for p in self.packages
        ):
            return self.note
        return f"{self.note}; needs pip install 'convsight[{self.extra}]'"


@dataclass(frozen=True, kw_only=True)
class FileSource(Source):
    """A source of model files, told apart by their suffix."""

    suffixes: tuple[str, ...] = ()

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` is a path with one of its suffixes."""
        return Path(spec).suffix.lower() in self.suffixes


class NamedSource(Source):
    """A source of architectures by name, built untrained or with pretrained weights."""

    def pretrained(self, spec: str) -> Model | None:
        """The model with its pretrained weights (downloaded on first use); None: none."""
        return None

    def builder(self, spec: str, options: dict[str, Any]) -> Build:
        """``build(num_classes, channels)`` of the architecture ``spec`` names."""
        raise NotImplementedError(f"{self.name} builds no architecture")

    def open(self, request: LoadRequest) -> Model:
        """The pretrained model, or the module fitted to and loaded with the weights."""
        if request.weights is None:
            model = self.pretrained(request.spec)
            if model is not None:
                if request.fields:
                    model.card = model.card.updated(**request.fields)
                return model
        build = self.builder(request.spec, dict(request.options))
        return with_weights(build, request.weights, request.fields)


def with_weights(build: Build, weights: Path | None, fields: Mapping[str, Any]) -> Model:
    """The module ``build`` makes, fitted to and loaded with ``weights`` (if any), and its
    card with the ``fields`` given."""
    state = read_state_dict(weights) if weights is not None else None
    module, card = fit_to_weights(build, state, fields)
    if weights is not None and state is not None:
        load_weights(module, state, weights, False)
        card.source = f"weights {weights} ({card.arch})"
    return Model(module, card.updated(**fields) if fields else card)
