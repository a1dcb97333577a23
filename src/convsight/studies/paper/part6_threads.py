"""The study's open threads made concrete: invariances from the Hessian, DeconvNet projections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.paper.inputs import PaperInputs, PathLike
from convsight.studies.paper.parts import Context, Part, Skip


@dataclass(frozen=True)
class InvarianceFigure:
    """One unit's invariances: the overview, the spectrum, the first invariance's GIF and the
    numbers of ``summary.json`` (eigenvalues, method, operator check)."""

    network: str
    unit: str
    overview: str
    spectrum: str
    gif: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class ProjectionFigure:
    """DeconvNet projections of one layer's channels: a figure per channel."""

    network: str
    layer: str
    figures: list[str]
    summary: dict[str, Any]


@dataclass(frozen=True)
class ThreadsResult:
    """The units analysed, the layers projected, and why something was left out."""

    invariances: list[InvarianceFigure]
    projections: list[ProjectionFigure]
    not_run: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        units = {
            f"{i.network} {i.unit}": {k: v for k, v in i.summary.items() if k != "directions"}
            for i in self.invariances
        }
        layers = {f"{p.network} {p.layer}": p.summary for p in self.projections}
        return {"invariances": units, "projections": layers, "not_run": self.not_run}


class ThreadsPart(Part[ThreadsResult]):
    """Invariances of a channel of the MNIST CNN (part 2) and of VGG16's last conv layer, from
    the exact Hessian of their softplus surrogates; DeconvNet projections of VGG16's channels
    in the photos, in the middle of the network and at its last conv layer."""

    key = "open_threads"
    section = "threads"

    def missing(self, inputs: PaperInputs) -> str | None:
        if inputs.vgg16_weights is None and inputs.data_dir is None:
            return "no --vgg16-weights and no MNIST --data-dir given"
        return None

    def run(self, ctx: Context) -> ThreadsResult:
        invariances, projections, not_run = [], [], {}
        mnist = ctx.out / "part2" / "mnist" / "model.pt"
        units: list[tuple[str, str, PathLike | None, str, int | None]] = [
            ("MNIST CNN", str(mnist), None, "features.3", ctx.plan.threads_mnist_size)
        ]
        if (vgg16 := ctx.inputs.vgg16_weights) is not None:
            units.append(("VGG16", "vgg16", vgg16, "features.28", ctx.plan.threads_vgg16_size))
        for network, spec, weights, layer, size in units:
            try:
                invariances.append(self._invariances(ctx, network, spec, weights, layer, size))
            except ConvsightError as exc:
                not_run[f"{network} invariances"] = str(exc)
        if ctx.inputs.vgg16_weights is not None and ctx.inputs.photos is not None:
            projections += [
                self._projections(ctx, layer) for layer in ctx.plan.threads_projection_layers
            ]
        else:
            not_run["projections"] = "VGG16 weights and --photos are both needed"
        if not invariances and not projections:
            raise Skip("; ".join(f"{k}: {v}" for k, v in not_run.items()))
        return ThreadsResult(invariances, projections, not_run)

    def _invariances(self, ctx, network, spec, weights, layer, size) -> InvarianceFigure:
        from convsight.analysis.invariances import HessianScale
        from convsight.models import load_model
        from convsight.optvis.settings import settings_for
        from convsight.runtime import seed_everything
        from convsight.studies.invariances import InvariancesRequest, Unit, write_invariances

        out = ctx.out / "threads" / f"invariances-{layer}-{Path(str(spec)).stem}"
        flags = {"steps": ctx.plan.class_steps or 256, **({"size": size} if size else {})}
        request = InvariancesRequest(
            Unit(layer, 0), settings_for("robust", "channel", **flags), frozenset(flags),
            k=ctx.plan.threads_k, scale=HessianScale(softplus=ctx.plan.threads_softplus),
            out=out, seed=ctx.seed, show_progress=ctx.show_progress, weights=weights,
            basis="pixel",
        )  # fmt: skip
        if spec == "vgg16":
            model = ctx.vgg16()
        else:
            seed_everything(ctx.seed)  # as the study seeds a model it loads
            model = load_model(spec, weights)
        summary = write_invariances(model, request).to_json()
        return InvarianceFigure(
            network,
            f"{layer} channel 0",
            ctx.rel(out / "invariances.png"),
            ctx.rel(out / "spectrum.png"),
            ctx.rel(out / "invariant_01.gif"),
            summary,
        )

    def _projections(self, ctx, layer: str) -> ProjectionFigure:
        from convsight.studies.projections import ProjectionsRequest, write_projections

        out = ctx.out / "threads" / f"projections-{layer}"
        request = ProjectionsRequest(
            layer, ctx.inputs.photos, list(range(ctx.plan.threads_channels)), top_k=4, out=out,
            seed=ctx.seed, show_progress=ctx.show_progress, weights=ctx.inputs.vgg16_weights,
        )  # fmt: skip
        summary = write_projections(ctx.vgg16(), request).to_json()
        figures = [ctx.rel(out / row["grid"]) for row in summary["channels"]]
        return ProjectionFigure("VGG16", layer, figures, summary)
