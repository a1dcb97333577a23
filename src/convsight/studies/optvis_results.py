"""What :func:`~convsight.studies.optvis.maximize` and
:func:`~convsight.studies.optvis.classviz` return: the rendered images with their numbers,
their files (``save(folder)``: a grid PNG, one PNG per row, ``images.npz``, ``summary.json``)
and their views (a captioned tile per channel or class)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convsight.analysis.trust_stream import DatasetTrust
from convsight.optvis.settings import RenderSettings
from convsight.report import out_file, prepare_out_dir, write_figure, write_json, write_npz
from convsight.report.grids import image_grid
from convsight.report.images import write_image
from convsight.report.notebook import Tile
from convsight.studies.results import Result


def shown_score(row: dict[str, Any]) -> str:
    """A class model's probability (``p=``), or a target's score (``s=``)."""
    if "probability" in row:
        return f"p={row['probability']:.2f}"
    return f"s={row['score']:.3g}"


def summary_rows(
    values: torch.Tensor, dead: Sequence[int], names: Sequence[str]
) -> list[dict[str, Any]]:
    """A JSON row per rendered row: its name, final objective and whether it is dead."""
    return [
        {"name": name, "objective": float(value), "dead": i in dead}
        for i, (name, value) in enumerate(zip(names, values.tolist(), strict=True))
    ]


NO_DATASET = (
    "not measured: no image folder given (--dataset DIR measures reach, rank and path "
    "similarity against natural images)"
)


def trust_json(trust: DatasetTrust | None) -> dict[str, Any]:
    """What the trust measures were taken over, or why there are none."""
    return {"dataset": None, "why": NO_DATASET} if trust is None else trust.to_json()


def trust_row(trust: DatasetTrust | None, i: int) -> dict[str, Any] | None:
    """Row ``i``'s trust measures (None: not measured)."""
    return None if trust is None else trust.row(i)


def trust_mark(trust: DatasetTrust | None, i: int) -> str:
    """Row ``i``'s short trust caption (`` · reach 1.3x, rank 1/104, off-path``), or nothing."""
    return "" if trust is None else f" · {trust.units[i].mark()}"


def render_facts(
    settings: RenderSettings, seed: int, device: str, seconds: float
) -> list[tuple[str, Any]]:
    """The facts of a render: the preset, steps and size, the seed, device and time."""
    size = settings.size or "the model's"
    return [
        ("settings", f"preset {settings.preset}, {settings.steps} steps, size {size}"),
        ("seed", seed),
        ("device", device),
        ("seconds", round(seconds, 2)),
    ]


@dataclass(kw_only=True)
class MaximizeResult(Result):
    """The rendered channels: ``images`` (N x C x H x W, pixel space), the final objective
    per row (``values``), the dead rows, the settings and how long the render took."""

    model: str
    weights: str | None
    layer: str
    objective: str
    channels: list[int]
    images: torch.Tensor
    values: torch.Tensor
    dead: list[int]  # rows whose objective stayed at 0
    settings: RenderSettings
    seed: int
    device: str
    seconds: float
    torch_threads: int = field(default_factory=torch.get_num_threads)
    trust: DatasetTrust | None = None  # the trust measures, with --dataset

    @property
    def dead_channels(self) -> list[int]:
        return [self.channels[i] for i in self.dead]

    def to_json(self) -> dict[str, Any]:
        names = [str(c) for c in self.channels]
        rows = summary_rows(self.values, self.dead, names)
        for i, row in enumerate(rows):
            row["trust"] = trust_row(self.trust, i)
        return {
            "model": self.model,
            "weights": self.weights,
            "layer": self.layer,
            "objective": self.objective,
            "channels": rows,
            "dead_channels": self.dead_channels,
            "settings": {**self.settings.to_dict(), "seed": self.seed, "device": self.device},
            "seconds": self.seconds,
            "torch_threads": self.torch_threads,
            "trust": trust_json(self.trust),
        }

    def save(self, out: str | os.PathLike) -> list[Path]:
        """The grid, one PNG per channel, the images as npz and ``summary.json``."""
        folder = prepare_out_dir(out)
        titles = [
            f"{c}" + (" (dead)" if i in self.dead else f": {v:.3g}")
            for i, (c, v) in enumerate(zip(self.channels, self.values.tolist(), strict=True))
        ]
        settings = self.settings
        title = f"{self.model} {self.layer}, preset {settings.preset}, {settings.steps} steps"
        grid = image_grid(self.images, titles, 8, title)
        written = [write_figure(folder / "grid.png", grid)]
        for c, image in zip(self.channels, self.images, strict=True):
            written.append(write_image(folder / f"channel_{c:04d}.png", image))
        images = write_npz(folder / "images.npz", images=self.images, channels=self.channels)
        written.append(images)
        written.append(write_json(folder / "summary.json", self.to_json()))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """One tile per channel: ``layer:channel`` and its final objective (or "dead"), and
        its trust mark when measured."""
        values = self.values.tolist()
        return [
            Tile(
                image,
                f"{self.layer}:{c} "
                + ("(dead)" if i in self.dead else f"{values[i]:.3g}")
                + trust_mark(self.trust, i),
            )
            for i, (c, image) in enumerate(zip(self.channels, self.images, strict=True))
        ]

    def facts(self) -> list[tuple[str, Any]]:
        """The model, layer, objective, channels and dead ones, and how it was rendered."""
        dead = ", ".join(map(str, self.dead_channels)) or "none"
        return [
            ("model", self.model),
            ("layer", self.layer),
            ("objective", self.objective),
            ("channels", ", ".join(map(str, self.channels))),
            ("dead channels", dead),
            *render_facts(self.settings, self.seed, self.device, self.seconds),
        ]


@dataclass(kw_only=True)
class ClassvizResult(Result):
    """The class models: ``images`` (N x C x H x W, pixel space), the classes' indices, a row
    per class (objective, whether dead, the model's probability and logit for the class, its
    top class, the file; with ``init="mean"`` how many images each start averaged), the
    start images (``init="mean"``), the settings and how long the render took."""

    model: str
    weights: str | None
    objective: str
    head: str
    init: str
    dataset: str | None
    indices: list[int]
    images: torch.Tensor
    values: torch.Tensor
    dead: list[int]
    rows: list[dict[str, Any]]
    start: torch.Tensor | None  # the start images of init="mean"
    # how it ran
    settings: RenderSettings
    seed: int
    device: str
    seconds: float
    torch_threads: int = field(default_factory=torch.get_num_threads)
    trust: DatasetTrust | None = None  # the trust measures, with an image folder as dataset

    def to_json(self) -> dict[str, Any]:
        rows = [{**row, "trust": trust_row(self.trust, i)} for i, row in enumerate(self.rows)]
        return {
            "model": self.model,
            "weights": self.weights,
            "objective": self.objective,
            "head": self.head,
            "init": self.init,
            "dataset": self.dataset,
            "classes": rows,
            "settings": {**self.settings.to_dict(), "seed": self.seed, "device": self.device},
            "seconds": self.seconds,
            "torch_threads": self.torch_threads,
            "trust": trust_json(self.trust),
        }

    def save(self, out: str | os.PathLike) -> list[Path]:
        """The grid and one PNG per class model, the images as npz, the start images (with
        ``init='mean'``) and ``summary.json``."""
        folder = prepare_out_dir(out)
        settings = self.settings
        title = f"{self.model}, preset {settings.preset}, init {self.init}, {settings.steps} steps"
        titles = [f"{row['name']}: {shown_score(row)}" for row in self.rows]
        written = [write_figure(folder / "grid.png", image_grid(self.images, titles, 8, title))]
        for row, image in zip(self.rows, self.images, strict=True):
            path = out_file(folder, row["file"])
            written.append(write_image(path, image, within=folder))
        images = write_npz(folder / "images.npz", images=self.images, classes=self.indices)
        written.append(images)
        if self.start is not None:
            written.append(_write_start(folder, self.start, self.rows))
        written.append(write_json(folder / "summary.json", self.to_json()))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """One tile per class model: the class label from the card and the model's
        probability for it (or "dead"), the judge's verdict and the trust mark when
        measured."""
        return [
            Tile(
                image,
                f"{row['name']} "
                + ("(dead)" if row["dead"] else shown_score(row))
                + judged(row)
                + trust_mark(self.trust, i),
            )
            for i, (row, image) in enumerate(zip(self.rows, self.images, strict=True))
        ]

    def facts(self) -> list[tuple[str, Any]]:
        """The model, objective, start, classes and dead ones, and how it was rendered."""
        dead = ", ".join(row["name"] for row in self.rows if row["dead"]) or "none"
        start = self.init + (f" ({self.dataset})" if self.dataset else "")
        return [
            ("model", self.model),
            ("objective", self.objective),
            ("head", self.head),
            ("start", start),
            ("classes", ", ".join(row["name"] for row in self.rows)),
            ("dead classes", dead),
            *render_facts(self.settings, self.seed, self.device, self.seconds),
        ]


def judged(row: dict[str, Any]) -> str:
    """The judge's verdict on a class model (`` · judge top-1``, ``top-5`` or ``miss``)."""
    found = row.get("transfer")
    if found is None:
        return ""
    return " · judge " + ("top-1" if found["top1"] else "top-5" if found["top5"] else "miss")


def _write_start(out: Path, start_pixels: torch.Tensor, rows: list[dict[str, Any]]) -> Path:
    """The start images of ``init='mean'``, titled with how many images each mean holds."""
    titles = [
        f"mean of {'?' if row['mean_of_images'] is None else row['mean_of_images']} "
        f"image(s): {row['name']}"
        for row in rows
    ]
    return write_figure(out / "start.png", image_grid(start_pixels, titles, 8, "start"))
