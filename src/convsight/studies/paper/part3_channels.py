"""Part 3, figures 3.2.1-3.2.3: what VGG16's channels want, paper preset beside robust."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.paper.parts import PRESETS, Context, Part, Skip, recorded

LAYERS = {"features.0": "first", "features.2": "second", "features.28": "last"}


@dataclass(frozen=True)
class ChannelRun:
    """One layer rendered with one preset: the grid, the dead channels, each channel's
    objective and the exact settings."""

    layer: str
    position: str  # which conv layer: first, second, last
    preset: str
    grid: str
    dead_channels: list[int]
    objective: list[float]
    seconds: float
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return recorded(self, "dead_channels", "objective", "seconds", "settings")


@dataclass(frozen=True)
class ChannelsResult:
    """Every layer x preset run, the channels rendered and the VGG16 weights used."""

    model: str
    weights_source: str
    channels: list[int]
    runs: list[ChannelRun]

    def to_json(self) -> dict[str, Any]:
        return {f"{run.layer}/{run.preset}": run.to_json() for run in self.runs}


class ChannelsPart(Part[ChannelsResult]):
    """Render the first channels of VGG16's first, second and last conv layers with both
    presets; skips when VGG16's weights cannot be loaded."""

    key = "vgg16_channels"
    section = "part3-channels"
    table_rank = 1  # dead-channel counts come after the study's accuracies

    def run(self, ctx: Context) -> ChannelsResult:
        try:
            model = ctx.vgg16()
        except ConvsightError as exc:
            raise Skip(str(exc)) from None
        channels = list(range(ctx.plan.channels))
        runs = [
            self._render(ctx, layer, position, preset, channels)
            for layer, position in LAYERS.items()
            for preset in PRESETS
        ]
        return ChannelsResult(model.card.name, model.card.source or model.card.name, channels, runs)

    def _render(
        self, ctx: Context, layer: str, position: str, preset: str, channels: list[int]
    ) -> ChannelRun:
        from convsight.optvis.settings import settings_for
        from convsight.studies.optvis import MaximizeRequest, maximize

        flags = (
            {"size": ctx.plan.paper_size}
            if preset == "paper"
            else {"steps": ctx.plan.robust_steps, "size": ctx.plan.robust_size}
        )
        folder = ctx.out / "part3" / f"{layer}-{preset}"
        weights = ctx.inputs.vgg16_weights
        settings = settings_for(preset, "channel", **flags)
        request = MaximizeRequest(
            layer, channels, settings, seed=ctx.seed, weights=weights, chosen=frozenset(flags)
        )
        summary = maximize(ctx.vgg16(), request, folder, ctx.show_progress).to_json()
        return ChannelRun(
            layer=layer,
            position=position,
            preset=preset,
            grid=ctx.rel(folder / "grid.png"),
            dead_channels=summary["dead_channels"],
            objective=[c["objective"] for c in summary["channels"]],
            seconds=summary["seconds"],
            settings=summary["settings"],
        )
