"""Part 4, figure 4.2: a self-built five-class CNN beside a pretrained network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convsight.errors import ConvsightError
from convsight.studies.numbers import STUDY
from convsight.studies.paper.inputs import PaperInputs
from convsight.studies.paper.parts import PRESETS, Context, Part

if TYPE_CHECKING:
    from convsight.models import Model
    from convsight.studies.five_class import SubsetTrainingResult

SUBSET = "the given ImageNet subset"
FASHION = "five classes of Fashion-MNIST"


@dataclass(frozen=True)
class Accuracies:
    """How one trained network did on the five classes, and how it was trained."""

    train_accuracy: float
    test_accuracy: float
    per_class_accuracy: Any
    settings: dict[str, Any]

    @classmethod
    def of(cls, run: SubsetTrainingResult) -> Accuracies:
        """The accuracies of a ``train_subset`` run."""
        return cls(run.train_accuracy, run.test_accuracy, run.per_class_accuracy, run.settings)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FineTuned:
    """The pretrained network with a new 5-way head."""

    model: str
    accuracies: Accuracies


@dataclass(frozen=True)
class ClassModelsFigure:
    """The self-built CNN's class models with one preset, and the exact settings."""

    src: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class FiveClassResult:
    """Both networks' accuracies on ``data``, their confusion matrices (figure path by run) and
    the self-built CNN's class models by preset."""

    data: str
    stand_in: bool  # Fashion-MNIST stands in for the study's ImageNet subset
    epochs: int
    self_built: Accuracies
    fine_tuned: FineTuned | None
    no_backbone: str | None  # why there is no pretrained network to compare with
    confusion: dict[str, str] = field(default_factory=dict)
    class_models: dict[str, ClassModelsFigure] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "data": self.data,
            "self_built": self.self_built.to_json(),
            "study": STUDY.five_class_json(),
        }
        if self.fine_tuned is not None:
            entry["fine_tuned"] = {
                "model": self.fine_tuned.model,
                **self.fine_tuned.accuracies.to_json(),
            }
        return entry


class FiveClassPart(Part[FiveClassResult]):
    """Train the self-built CNN on five classes (an ImageNet subset, else Fashion-MNIST as a
    labelled stand-in), fine-tune a pretrained network beside it, render its class models."""

    key = "five_class"
    section = "part4"

    def missing(self, inputs: PaperInputs) -> str | None:
        if inputs.subset is None and inputs.fashion_mnist is None:
            return "no --subset and no --fashion-mnist folder given"
        return None

    def run(self, ctx: Context) -> FiveClassResult:
        from convsight.studies.five_class import SubsetTrainingRequest, train_subset
        from convsight.studies.subset import SubsetRequest, make_subset

        folder = ctx.out / "part4"
        if ctx.inputs.subset is not None:
            data, label = Path(ctx.inputs.subset), SUBSET
        else:
            data, label = folder / "data", FASHION
            fashion = ctx.inputs.fashion_mnist
            make_subset(
                SubsetRequest(data, from_fashion_mnist=fashion, seed=ctx.seed, show_progress=False)
            )
        self_built = train_subset(
            SubsetTrainingRequest(
                data,
                folder / "self-built",
                epochs=ctx.plan.subset_epochs,
                image_size=ctx.plan.subset_size,
                seed=ctx.seed,
                show_progress=ctx.show_progress,
            )
        )
        fine_tuned, no_backbone = self._fine_tune(ctx, data)
        confusion = {
            run: ctx.rel(folder / run / "confusion_matrix.png")
            for run in ("self-built", "fine-tuned")
            if (folder / run / "confusion_matrix.png").exists()
        }
        return FiveClassResult(
            data=label,
            stand_in=label == FASHION,
            epochs=ctx.plan.subset_epochs,
            self_built=Accuracies.of(self_built),
            fine_tuned=fine_tuned,
            no_backbone=no_backbone,
            confusion=confusion,
            class_models={
                preset: self._class_models(ctx, self_built.model, preset) for preset in PRESETS
            },
        )

    def _fine_tune(self, ctx: Context, data: Path) -> tuple[FineTuned | None, str | None]:
        """The pretrained class-score model with a new 5-way head, or why there is none."""
        from convsight.studies.five_class import SubsetTrainingRequest, train_subset

        try:
            model = ctx.class_model()
            request = SubsetTrainingRequest(
                data,
                ctx.out / "part4" / "fine-tuned",
                model=model.spec,
                finetune=True,
                weights=model.weights,
                epochs=ctx.plan.subset_epochs,
                image_size=ctx.plan.backbone_size,
                seed=ctx.seed,
                show_progress=ctx.show_progress,
            )
            tuned = train_subset(request)
        except ConvsightError as exc:
            return None, str(exc)
        return FineTuned(model.spec, Accuracies.of(tuned)), None

    def _class_models(self, ctx: Context, model: Model, preset: str) -> ClassModelsFigure:
        """The trained self-built CNN's class models with ``preset``."""
        from convsight.optvis.settings import settings_for
        from convsight.studies.optvis import ClassvizRequest, classviz

        out = ctx.out / "part4" / f"classes-{preset}"
        flags = {} if preset == "paper" else {"steps": ctx.plan.class_steps}
        settings = settings_for(preset, "class", **flags)
        request = ClassvizRequest(["all"], settings, seed=ctx.seed, chosen=frozenset(flags))
        summary = classviz(model, request, out, ctx.show_progress).to_json()
        return ClassModelsFigure(ctx.rel(out / "grid.png"), summary["settings"])
