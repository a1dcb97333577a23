"""What :func:`~convsight.studies.atlas.build_atlas` is asked (:class:`AtlasRequest`) and what
it returns (:class:`AtlasResult`, whose ``to_json()`` is ``atlas.json``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from convsight.report import safe_filename
from convsight.report.notebook import MAX_TILES, Tile, file_tile
from convsight.studies.results import Result

CHANNELS_SHOWN = 4
"""The most channels of a layer the inline view shows."""


@dataclass(frozen=True)
class Compression:
    """The compression trials an atlas runs (``convsight compress`` on its model): labelled
    data, fine-tuning images (0: none) and test images (None: all)."""

    data: Path
    finetune_images: int = 10000
    test_images: int | None = None


@dataclass(frozen=True)
class AtlasRequest:
    """One atlas: the layers (``["all"]``: every convolution, activation and pooling layer),
    the channels of each (``"0-7"`` or a list; None: all), the dataset folder of the top
    examples, the presets and their steps and size (None: each preset's), the channels
    rendered together (``batch``), each channel's first invariance (a softplus beta; 0:
    none), Ray (``local``, ``auto`` or ``HOST:PORT``; None: this process), the plan (None:
    with ``all`` layers), the compression trials, the output folder and the seed; ``yes``
    allows more than ``MAX_STEPS`` steps or a long plan; ``cheap`` renders the channels the
    cheap way (bf16 where native, stopped once the objective is flat:
    :func:`convsight.optvis.settings.cheap_settings`). ``weights`` and ``model_spec`` say
    where the model came from (recorded in the JSON files, not read). ``class_relevance``:
    the dataset pass also finds the classes each channel carries most relevance for (models
    with class scores; a forward and backward pass more a batch)."""

    layers: Sequence[str]
    out: str | os.PathLike = "runs/atlas"
    channels: str | Sequence[int] | None = None
    dataset: str | os.PathLike | None = None
    top_k: int = 9
    presets: Sequence[str] = ("paper", "robust")
    steps: int | None = None
    size: int | None = None
    batch: int = 16
    invariances: float = 0.0
    ray: str | None = None
    plan: bool | None = None
    compression: Compression | None = None
    seed: int = 0
    show_progress: bool = True
    yes: bool = False
    cheap: bool = True
    weights: str | os.PathLike | None = None
    model_spec: str | None = None
    class_relevance: bool = True

    @property
    def planned(self) -> bool:
        """Whether the plan is printed: as asked, else with ``all`` layers."""
        if self.plan is not None:
            return self.plan
        return [name.lower() for name in self.layers] == ["all"]


@dataclass(kw_only=True)
class AtlasResult(Result):
    """The atlas built: its model, one row per layer (channels, dead ones, redundancy, what
    this run rendered), the presets and their settings, the dataset, the work (local or Ray)
    and the plan with what the run actually spent (``actual``); ``files``: ``atlas.json`` and
    ``index.html``."""

    model: str
    weights: str | None
    layers: list[dict[str, Any]]
    presets: list[str]
    render_settings: dict[str, dict[str, Any]]
    dataset: str | None
    dataset_size: int
    skipped_images: list[dict[str, str]]
    top_k: int
    seed: int
    channels: int
    rendered_this_run: int
    seconds_this_run: float
    seconds_per_channel: float | None
    work: dict[str, Any]
    plan: dict[str, Any] | None
    actual: dict[str, Any]
    """Per layer the channels this run rendered, their render seconds (as the workers
    measured them, what the plan estimates), seconds a channel and wall seconds, with the
    plan's estimate and the ratio actual / estimate when there is a plan; and the totals."""
    compression: str | None
    """``compression/compression.json`` when the trials ran (None: not asked for)."""

    @property
    def index(self) -> Path:
        """The site's front page."""
        return next(p for p in self.files if p.name == "index.html")

    def to_json(self) -> dict[str, Any]:
        """What ``atlas.json`` holds."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "files"}

    def tiles(self) -> list[Tile]:
        """Per layer, its first channels as the last preset renders them (the pictures the
        layer pages lead with), read from the atlas's folder; a few a layer, so that every
        layer is shown. A picture that is gone is left out."""
        if not self.files or not self.presets:
            return []
        out, preset = self.index.parent, safe_filename(self.presets[-1])
        each = max(1, min(CHANNELS_SHOWN, MAX_TILES // max(1, len(self.layers))))
        tiles = []
        for layer in self.layers:
            dead = set(layer.get("dead", []))
            for channel in layer["channels"][:each]:
                caption = f"{layer['name']} c{channel}" + (" (dead)" if channel in dead else "")
                path = out / layer["dir"] / "img" / f"c{channel}_{preset}.png"
                tile = file_tile(path, caption)
                if tile is not None:
                    tiles.append(tile)
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The model, the channels done and the time, then a line per layer."""
        per = self.seconds_per_channel
        facts: list[tuple[str, Any]] = [
            ("model", self.model),
            ("presets", ", ".join(self.presets)),
            ("channels", f"{self.channels} ({self.rendered_this_run} rendered this run)"),
            (
                "seconds",
                f"{self.seconds_this_run:.1f}" + (f" ({per:.2f} a channel)" if per else ""),
            ),
            ("dataset", f"{self.dataset} ({self.dataset_size} images)" if self.dataset else "none"),
            ("render seconds", self._render_seconds()),
        ]
        if self.files:
            facts.append(("index", str(self.index)))
        for layer in self.layers:
            count, dead = len(layer["channels"]), len(layer.get("dead", []))
            facts.append((layer["name"], f"{layer.get('type', '')}, {count} channels, {dead} dead"))
        return facts

    def _render_seconds(self) -> str:
        """This run's render seconds on one worker, and the plan's estimate when there is one."""
        spent = f"{self.actual['render_seconds_one_worker']:.1f} on one worker"
        estimate, ratio = self.actual["estimated_render_seconds_one_worker"], self.actual["ratio"]
        if estimate is None:
            return spent
        return spent + f", estimated {estimate:.1f}" + (f" ({ratio:.2f}x)" if ratio else "")
