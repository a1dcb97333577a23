"""Part 3, figures 3.3.1-3.3.3: class models of ostrich, goldfish and lemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.paper.inputs import STUDY_CLASSES
from convsight.studies.paper.parts import PRESETS, ClassScoreModel, Context, Part, Skip


@dataclass(frozen=True)
class ClassRun:
    """The class models from one initialization with one preset: the grid, the start images
    (mean initialization), each class's probability and the model's top-1 class."""

    init: str
    preset: str
    grid: str
    start: str | None
    classes: list[dict[str, Any]]
    settings: dict[str, Any]

    @property
    def recognised(self) -> int:
        """How many of the images the model takes for their own class (top-1)."""
        return sum(c["model_top1"] == c["name"] for c in self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            c["name"]: {"probability": c["probability"], "model_top1": c["model_top1"]}
            for c in self.classes
        }


@dataclass(frozen=True)
class ClassModelsResult:
    """Every initialization x preset run, the model that scored them and the photos folder
    the class means came from (``None``: no ``--photos``, so no mean initialization)."""

    model: ClassScoreModel
    note: str | None
    photos: str | None
    runs: list[ClassRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.spec,
            "note": self.note,
            "runs": {f"{run.init}/{run.preset}": run.to_json() for run in self.runs},
        }


class ClassModelsPart(Part[ClassModelsResult]):
    """Maximize each study class's score from noise (and from the class mean when photos are
    given), with both presets; skips when no model with ImageNet class scores loads."""

    key = "class_models"
    section = "part3-classes"

    def run(self, ctx: Context) -> ClassModelsResult:
        try:
            model = ctx.class_model()
        except ConvsightError as exc:
            raise Skip(str(exc)) from None
        photos = ctx.inputs.photos
        inits = ["random"] + (["mean"] if photos is not None else [])
        runs = [self._render(ctx, model, init, preset) for init in inits for preset in PRESETS]
        photos_name = Path(photos).name if photos is not None else None
        return ClassModelsResult(model, model.note("class models"), photos_name, runs)

    def _render(self, ctx: Context, model: ClassScoreModel, init: str, preset: str) -> ClassRun:
        from convsight.optvis.settings import settings_for
        from convsight.studies.optvis import ClassvizRequest, classviz, load_on_device

        folder = ctx.out / "part3" / f"classes-{init}-{preset}"
        flags = {"size": ctx.plan.class_size}
        if preset != "paper":
            flags["steps"] = ctx.plan.class_steps
        request = ClassvizRequest(
            STUDY_CLASSES,
            settings_for(preset, "class", **flags),
            init=init,
            dataset=ctx.inputs.photos if init == "mean" else None,
            seed=ctx.seed,
            weights=model.weights,
            chosen=frozenset(flags),
        )
        loaded = model.model or load_on_device(model.spec, model.weights, "auto")
        summary = classviz(loaded, request, folder, ctx.show_progress).to_json()
        start = folder / "start.png"
        shown = init == "mean" and preset == "paper" and start.exists()
        return ClassRun(
            init=init,
            preset=preset,
            grid=ctx.rel(folder / "grid.png"),
            start=ctx.rel(start) if shown else None,
            classes=summary["classes"],
            settings=summary["settings"],
        )
