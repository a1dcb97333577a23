"""The protocol every part of the study follows: what it needs, what it runs, what it returns.

A part declares the inputs it needs (and the one-sentence reason it skips without them), runs its
jobs, and returns a result dataclass: its figures (paths relative to the report), the numbers the
table shows, and the data ``results.json`` records (``to_json``). The part's template turns the
result into prose; the study runs the parts in order.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from convsight.errors import ConvsightError
from convsight.studies.paper.inputs import PaperInputs, PaperModels
from convsight.studies.paper.plan import Plan

if TYPE_CHECKING:
    from convsight.models import Model

PRESETS = ("paper", "robust")  # the study's method beside what the field learned since


class Skip(Exception):
    """A part cannot run; the message is the one-sentence reason the report shows."""


class PartResult(Protocol):
    """What a part returns: a dataclass that says what ``results.json`` records of it."""

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=PartResult)


def recorded(result: object, *names: str) -> dict[str, Any]:
    """The fields ``names`` of ``result``, as ``results.json`` records them."""
    return {name: getattr(result, name) for name in names}


@dataclass(frozen=True)
class ClassScoreModel:
    """The model whose class scores the class models and maps use: VGG16 with its ImageNet
    classifier, else ``--classifier`` (``fallback``: VGG16's classifier was unavailable)."""

    spec: str
    weights: str | os.PathLike | None = None
    fallback: bool = False
    model: Model | None = field(default=None, compare=False, repr=False)
    """The model itself, loaded once and shared by the parts."""

    @property
    def weights_name(self) -> str | None:
        return Path(self.weights).name if self.weights else None

    def note(self, use: str) -> str | None:
        """The sentence that records the fallback for ``use`` ("class models", "maps")."""
        from convsight.report.html import render_page

        return (
            render_page("paper_fallback_note.txt", model=self, use=use) if self.fallback else None
        )


@dataclass
class Context:
    """What every part runs with: the output folder, the plan, the seed, the inputs and the
    models the parts share (each loaded once)."""

    out: Path
    plan: Plan
    seed: int
    show_progress: bool
    inputs: PaperInputs
    models: PaperModels = field(default_factory=PaperModels, repr=False)
    _class_model: ClassScoreModel | None = field(default=None, repr=False)

    def rel(self, path: Path) -> str:
        """``path`` as the report links it (relative to the output folder)."""
        return str(Path(path).relative_to(self.out))

    def vgg16(self) -> Model:
        """VGG16 with ``--vgg16-weights`` (none given: torchvision's), loaded once per run."""
        from convsight.models import load_model

        if self.models.vgg16 is None:
            self.models.vgg16 = load_model("vgg16", self.inputs.vgg16_weights)
        return self.models.vgg16

    def class_model(self) -> ClassScoreModel:
        """VGG16 if its ImageNet classifier loads, else ``--classifier``; found once per run
        (a failure is tried again by the next part that asks)."""
        from convsight.models import load_model

        if self._class_model is None:
            try:
                shared = self.inputs.vgg16_weights is None  # then the same VGG16 as vgg16()
                vgg16 = self.vgg16() if shared else load_model("vgg16")
                self._class_model = ClassScoreModel("vgg16", model=vgg16)
            except ConvsightError:
                weights = self.inputs.classifier_weights
                if self.models.classifier is None:
                    self.models.classifier = load_model(self.inputs.classifier, weights)
                model = self.models.classifier
                self._class_model = ClassScoreModel(self.inputs.classifier, weights, True, model)
        return self._class_model


class Part(ABC, Generic[R]):
    """One part of the study. Subclasses set ``key`` (its entry in ``results.json``),
    ``section`` (its id in the report; its template is ``paper_<section>.html``) and
    ``table_rank`` (where its rows stand in the table: the study's accuracies first)."""

    key: ClassVar[str]
    section: ClassVar[str]
    table_rank: ClassVar[int] = 0

    @property
    def template(self) -> str:
        return f"paper_{self.section}.html"

    def missing(self, inputs: PaperInputs) -> str | None:
        """Why the part skips for want of an input; ``None`` when it has what it needs."""
        return None

    @abstractmethod
    def run(self, ctx: Context) -> R:
        """Do the part's work and return its result; raise :class:`Skip` when it cannot."""

    def __call__(self, ctx: Context) -> Outcome[R]:
        start = time.perf_counter()
        reason = self.missing(ctx.inputs)
        if reason is None:
            try:
                return Outcome(self, self.run(ctx), seconds=time.perf_counter() - start)
            except Skip as skip:
                reason = str(skip)
        return Outcome(self, skipped=reason, seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """A part after its run: its result, or the reason it skipped, and its wall time."""

    part: Part[R]
    result: R | None = None
    skipped: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.result.to_json() if self.result is not None else {"skipped": self.skipped}
