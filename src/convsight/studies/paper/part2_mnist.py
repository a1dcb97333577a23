"""Part 2: the study's MNIST CNN, its test accuracy and its conv outputs for a 7."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.numbers import STUDY
from convsight.studies.paper.parts import Context, Part, Skip, recorded


@dataclass(frozen=True)
class MnistResult:
    """The trained network's accuracy and history, and the figures: training curves and the
    conv outputs of each layer (``feature_maps``: figure path by layer name)."""

    test_accuracy: float
    history: list[dict[str, Any]]
    settings: dict[str, Any]
    seconds: float
    curves: str
    feature_maps: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "study": STUDY.mnist_test_accuracy,
            **recorded(self, "history", "settings", "seconds"),
        }


class MnistPart(Part[MnistResult]):
    """Train the study's network (stride 2, same padding), show its conv outputs for a 7;
    skips when MNIST cannot be read or downloaded."""

    key = "mnist"
    section = "part2"

    def run(self, ctx: Context) -> MnistResult:
        from convsight.studies.mnist import (
            ActivationsRequest,
            MnistTrainingRequest,
            train_mnist,
            write_activations,
        )

        folder = ctx.out / "part2"
        try:
            run = train_mnist(
                MnistTrainingRequest(
                    folder / "mnist",
                    stride=2,
                    padding="same",
                    epochs=ctx.plan.mnist_epochs,
                    train_limit=ctx.plan.mnist_train_limit,
                    data_dir=ctx.inputs.data_dir,
                    seed=ctx.seed,
                    show_progress=ctx.show_progress,
                )
            )
        except ConvsightError as exc:
            raise Skip(str(exc)) from None
        request = ActivationsRequest(data_dir=ctx.inputs.data_dir, seed=ctx.seed)
        written = write_activations(run.model, request, folder / "activations").files
        return MnistResult(
            test_accuracy=run.test_accuracy,
            history=run.rows,
            settings=run.settings,
            seconds=run.seconds,
            curves=ctx.rel(folder / "mnist" / "training_curves.png"),
            feature_maps={
                path.stem: ctx.rel(path)
                for path in written
                if path.suffix == ".png" and path.stem.startswith("features")
            },
        )
