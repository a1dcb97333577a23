"""The related work made concrete: saliency, DeconvNet, guided backprop and Grad-CAM maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.paper.inputs import FIVE_PHOTOS, PaperInputs, photo_files
from convsight.studies.paper.parts import ClassScoreModel, Context, Part, Skip

METHODS = ["saliency", "deconvnet", "guided", "gradcam"]


@dataclass(frozen=True)
class AttributionResult:
    """The maps of each method for the photo of each of the five classes that was found
    (``absent``: the classes with no photo), and each method's options."""

    model: ClassScoreModel
    note: str | None
    photos: str
    absent: list[str]
    figure: str
    images: list[str]
    target_probability: list[float]
    methods: list[str]  # as they ran
    options: dict[str, Any]  # method name -> the options it ran with

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.spec,
            "images": self.images,
            "target_probability": self.target_probability,
            "methods": self.methods,
        }


class RelatedWorkPart(Part[AttributionResult]):
    """Attribution maps of the five classes' photos, with the true class as target."""

    key = "attribution"
    section = "related"

    def missing(self, inputs: PaperInputs) -> str | None:
        return "no --photos folder given" if inputs.photos is None else None

    def run(self, ctx: Context) -> AttributionResult:
        from convsight.models import load_model
        from convsight.runtime import seed_everything
        from convsight.studies.saliency import SaliencyRequest, write_saliency

        photos = ctx.inputs.photos
        assert photos is not None  # missing() said so otherwise
        by_label = photo_files(photos)
        labels = {name: name.replace("_", " ").lower() for name in FIVE_PHOTOS}
        found = [(n, by_label[labels[n]][0]) for n in FIVE_PHOTOS if labels[n] in by_label]
        if not found:
            raise Skip(f"none of the five classes' photos is in {photos}")
        try:
            model = ctx.class_model()
        except ConvsightError as exc:
            raise Skip(str(exc)) from None
        folder = ctx.out / "related"
        request = SaliencyRequest(
            [f for _, f in found],
            targets=[n.replace("_", " ") for n, _ in found],
            methods=METHODS,
            seed=ctx.seed,
            model_name=model.spec,
            weights=model.weights,
        )
        seed_everything(ctx.seed)  # then the model is loaded, as the command line does
        loaded = load_model(model.spec, model.weights)
        shown = ctx.show_progress
        maps = write_saliency(loaded, request, out=folder, show_progress=shown, seeded=True)
        ran = [entry.method.name for entry in maps.methods]
        return AttributionResult(
            model=model,
            note=model.note("maps"),
            photos=Path(photos).name,
            absent=[n.replace("_", " ") for n in FIVE_PHOTOS if labels[n] not in by_label],
            figure=ctx.rel(folder / "saliency.png"),
            images=[str(p) for p in maps.paths],
            target_probability=maps.target_probability or [],
            methods=ran,
            options={m.method.name: m.options for m in maps.methods if m.method.name in METHODS},
        )
