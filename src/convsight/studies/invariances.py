"""Job behind ``convsight invariances``: render a unit's optimum, find its invariances, write.

Every input (model, unit, k, the Hessian's scale, frames, render settings, output folder) is
checked before the optimum is rendered; nothing is written for bad input. The analysis is at
the render, on the response's level set within its sphere (see
:mod:`convsight.analysis.invariances`), in the ``basis`` asked for (the render's Fourier image
basis by default, or the pixels: :mod:`convsight.analysis.image_basis`); ``ascend`` > 0 first
moves it up the sphere. The frames of each direction follow the sphere x(t) = cos t · x + sin t
· r · v̂ from the optimum in the basis's coordinates (t from 0 to ``angle``), drawn in pixels;
in the pixel basis they are clipped to [0, 1] only to be shown (the JSON gives the response on
the sphere and on the clipped image). The directions are labelled invariant or selective by the
response measured along these paths (:mod:`convsight.analysis.measured_directions`), not by
their eigenvalues, which the JSON keeps beside them.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convsight.analysis.image_basis import PixelBasis, image_basis
from convsight.analysis.invariances import (
    HessianScale,
    Invariances,
    Response,
    channel_response,
    check_k,
    class_response,
    gradients,
    invariances,
)
from convsight.analysis.measured_directions import (
    LABELS,
    Direction,
    frames,
    random_tangents,
    rank_by_response,
    responses,
    walk,
)
from convsight.analysis.measured_directions import sphere_path as sphere_path
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis.model_hooks import check_model_hooks
from convsight.optvis.render import RenderResult, render_channels, render_classes
from convsight.optvis.settings import RenderSettings
from convsight.report import prepare_out_dir, write_json
from convsight.report.notebook import Tile
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.invariances_files import GIF_SIDE as GIF_SIDE
from convsight.studies.invariances_files import write_outputs
from convsight.studies.results import Result


@dataclass(frozen=True)
class Unit:
    """The unit whose optimum is analysed: a channel of a layer, or a class."""

    layer: str | None = None
    channel: int | None = None
    target: str | int | None = None

    def check(self) -> None:
        """Exactly one of a layer channel and a class."""
        if self.target is not None and (self.layer is not None or self.channel is not None):
            raise ConvsightError("give --layer with --channel, or --class, not both")
        if self.target is None and (self.layer is None or self.channel is None):
            raise ConvsightError("give --layer and --channel (a channel), or --class (a class)")

    @property
    def kind(self) -> str:
        return "channel" if self.target is None else "class"

    def response(self, model: Model, size: int | None) -> tuple[Response, int | None, str]:
        """f(pixels), the class index (None for a channel) and a name; checks the unit."""
        if self.target is None:
            assert self.layer is not None and self.channel is not None
            f = channel_response(model, self.layer, self.channel, size)
            return f, None, f"{self.layer} channel {self.channel}"
        index = model.class_index(self.target)
        return class_response(model, index), index, f"class {model.card.label(index)}"

    def render(self, model: Model, index: int | None, settings, seed: int, progress: bool):
        """The optimum, rendered by the library (one row)."""
        if index is None:
            assert self.layer is not None and self.channel is not None
            return render_channels(
                model, self.layer, [self.channel], seed=seed, progress=progress, settings=settings
            )
        return render_classes(model, [index], seed=seed, progress=progress, settings=settings)


def check_frames(frames: int, angle: float) -> None:
    """Two frames at least; an angle in (0, 180] degrees."""
    if frames < 2:
        raise ConvsightError(f"--frames must be at least 2, not {frames}")
    if not math.isfinite(angle) or not 0 < angle <= 180:
        raise ConvsightError(f"--angle must be above 0 and at most 180 degrees, not {angle}")


def ascend_on_sphere(
    f: Response, x: torch.Tensor, steps: int, angle: float = 0.02
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Up to ``steps`` steps of gradient ascent of f on the sphere |y| = |x| (along geodesics;
    the step angle, in radians, grows 1.5x after a step that raised f and halves after one that
    did not): the render's image moved towards a point where the tangent gradient vanishes,
    the optimum on the sphere that the Hessian analysis is about. Returns the point and a
    record of the ascent (responses and |P g| before and after)."""
    x, radius = x.detach(), float(x.norm())
    values, grads = gradients(f, x[None], 1)
    value, grad = float(values[0]), grads[0]

    def tangent_norm(g: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, float]:
        tangent = g - (g * at).sum() / radius**2 * at
        return tangent, float(tangent.norm())

    record = {"steps": steps, "accepted": 0, "response_before": value}
    record["tangent_gradient_norm_before"] = tangent_norm(grad, x)[1]
    for _ in range(steps):
        tangent, norm = tangent_norm(grad, x)
        if norm == 0 or angle < 1e-7:
            break
        moved = math.cos(angle) * x + math.sin(angle) * radius * tangent / norm
        new_values, new_grads = gradients(f, moved[None], 1)
        if float(new_values[0]) > value:
            x, value, grad = moved, float(new_values[0]), new_grads[0]
            record["accepted"] += 1
            angle *= 1.5
        else:
            angle *= 0.5
    record["response_after"] = value
    record["tangent_gradient_norm_after"] = tangent_norm(grad, x)[1]
    return x, record


def _basis(name: str, settings: RenderSettings) -> PixelBasis:
    """The basis ``name``; the Fourier one with the render's colour decorrelation and decay
    when it was rendered in Fourier space, else Lucid's (decorrelated, 1/f)."""
    if settings.param in ("fourier", "maco"):
        return image_basis(name, settings.decorrelate, settings.decay_power)
    return image_basis(name)


def _stacked(directions: list[Direction], attribute: str, empty: torch.Tensor) -> torch.Tensor:
    """The directions' ``attribute`` stacked (``empty`` when there are none)."""
    return torch.stack([getattr(d, attribute) for d in directions]) if directions else empty


def _paths(
    f: Response, found: Invariances, angles: list[float], device: torch.device, seed: int
) -> tuple[dict[str, list[Direction]], dict[str, dict[str, torch.Tensor]]]:
    """Every direction walked and measured, ranked invariant or selective by the response it
    keeps; and for each kind (invariant, selective, random) the frames in pixels (m x T x C x H
    x W) and the response on the sphere and on the clipped frames (m x T)."""
    invariant, selective = rank_by_response(walk(f, found, angles, device), len(found.invariant))
    walked = {"invariant": invariant, "selective": selective}
    no_frames = found.point.new_zeros(0, len(angles), *found.point.shape)
    paths = {
        kind: {
            "images": _stacked(directions, "images", no_frames),
            "on_sphere": _stacked(directions, "on_sphere", torch.zeros(0, len(angles))),
            "clipped": _stacked(directions, "clipped", torch.zeros(0, len(angles))),
        }
        for kind, directions in walked.items()
    }
    random = random_tangents(found.point, len(found.invariant), seed, found.normal)
    images, on_sphere, clipped = frames(f, found.basis, found.point, random, angles, device)
    paths["random"] = {"images": images, "on_sphere": on_sphere, "clipped": clipped}
    return walked, paths


def _direction_rows(
    walked: dict[str, list[Direction]], angles: list[float]
) -> list[dict[str, Any]]:
    """The JSON row of each direction, in the measured order: its label, the response kept
    along its path, its eigenvalue and where that came from, and its strip and GIF."""
    rows = []
    for kind, directions in walked.items():
        for rank, d in enumerate(directions, start=1):
            stem = f"{kind}_{rank:02d}"
            rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "label": d.label(angles),
                    "mean_response": d.mean_response,
                    "response_kept": d.kept(),
                    "eigenvalue": d.eigenvalue,
                    "eigen_end": d.eigen_end,
                    "eigen_rank": d.eigen_rank,
                    "angles_degrees": angles,
                    "response_on_sphere": d.on_sphere.tolist(),
                    "response_clipped": d.clipped.tolist(),
                    "strip": f"{stem}.png",
                    "gif": f"{stem}.gif",
                }
            )
    return rows


@dataclass(frozen=True)
class InvariancesRequest:
    """What :func:`write_invariances` analyses: the unit, the render settings of its optimum
    (``given``: the settings the user set; their model hooks must find their layers), k
    directions of each kind, the Hessian's scale, ``ascend`` steps up the sphere first, the
    frames and degrees of each path, the output folder (None: nothing written), the seed and
    the device; ``basis``: the coordinates the Hessian is taken in, ``fourier`` (the render's
    decorrelated Fourier image basis: directions of natural-image statistics) or ``pixel``.
    ``weights`` says where the model came from (recorded, not read). Checked when made."""

    unit: Unit
    settings: RenderSettings
    given: frozenset[str] = frozenset()
    k: int = 4
    scale: HessianScale = HessianScale()
    ascend: int = 0
    frames: int = 9
    angle: float = 45.0
    out: str | os.PathLike | None = None
    seed: int = 0
    device: str = "auto"
    show_progress: bool = True
    weights: str | os.PathLike | None = None
    basis: str = "fourier"

    def __post_init__(self) -> None:
        image_basis(self.basis)  # one sentence for a basis it does not know
        if self.ascend < 0:
            raise ConvsightError(f"--ascend must be 0 or more, not {self.ascend}")
        self.unit.check()
        self.scale.check()
        check_frames(self.frames, self.angle)


@dataclass(kw_only=True)
class InvariancesResult(Result):
    """The analysis: the model, the unit, the render of its optimum, ``found`` (the point, the
    directions and their eigenvalues, the operator check), the paths' frames and responses
    (``paths[kind]["images"]``, m x T x C x H x W, in pixels; kinds as measured), ``walked``
    (each kind's directions, measured), the rows of the directions, the ascent and the
    settings; ``surrogate``: the softplus surrogate's numbers (None: not used)."""

    model: str
    weights: str | None
    unit: dict[str, Any]
    objective: str
    head: Any
    render: dict[str, Any]
    found: Invariances
    paths: dict[str, dict[str, torch.Tensor]]
    walked: dict[str, list[Direction]]
    angles: list[float]
    directions: list[dict[str, Any]]
    torch_threads: int
    ascent: dict[str, Any]
    settings: dict[str, Any]
    surrogate: dict[str, Any] | None = None
    seconds_total: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """What ``summary.json`` holds."""
        data = {
            "model": self.model,
            "weights": self.weights,
            "unit": self.unit,
            "objective": self.objective,
            "head": self.head,
            "render": self.render,
            **self.found.summary(),
            "labels": LABELS,
            "directions": self.directions,
            "torch_threads": self.torch_threads,
            "random_directions": {
                "angles_degrees": self.angles,
                "response_on_sphere": self.paths["random"]["on_sphere"].tolist(),
            },
            "ascent": self.ascent,
            "settings": self.settings,
        }
        if self.surrogate is not None:
            data["surrogate"] = self.surrogate
        return data | {"seconds_total": self.seconds_total}

    @property
    def unit_name(self) -> str:
        """The unit in words: ``LAYER channel N`` or ``class LABEL``."""
        unit = self.unit
        if unit["kind"] == "channel":
            return f"{unit['layer']} channel {unit['channel']}"
        return f"class {unit['label']}"

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Optimum, strips, GIFs, the overview, the spectrum, the arrays and ``summary.json``."""
        folder = prepare_out_dir(out)
        title = f"{self.model} {self.unit_name}"
        written = write_outputs(folder, self.found, self.walked, self.angles, title)
        written.append(write_json(folder / "summary.json", self.to_json(), within=folder))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """The optimum, then the end of each direction's path (its last frame, clipped)."""
        tiles = [Tile(self.found.image.clamp(0, 1), f"optimum: {self.found.value:.3g}")]
        for row in self.directions:
            kind, rank = row["kind"], row["rank"]
            frame = self.paths[kind]["images"][rank - 1][-1].clamp(0, 1)
            end, value = row["angles_degrees"][-1], row["response_on_sphere"][-1]
            label = f"{kind} {rank}, {end:.0f}°: {value:.3g} ({row['label']})"
            tiles.append(Tile(frame, label))
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The model, unit, response, eigenvalues, whether they are reliable, the settings."""
        found, settings = self.found, self.settings
        return [
            ("model", self.model),
            ("unit", self.unit_name),
            ("objective", self.objective),
            ("response", f"{found.value:.4g}"),
            ("basis", found.basis.name),
            ("invariant eigenvalues", ", ".join(f"{v:.3g}" for v in found.invariant_values)),
            ("selective eigenvalues", ", ".join(f"{v:.3g}" for v in found.selective_values)),
            *((f"{row['kind']} {row['rank']}", row["label"]) for row in self.directions),
            ("reliable", "not checked" if found.reliable is None else found.reliable),
            (
                "settings",
                f"k {settings['k']}, {settings['frames']} frames to "
                f"{settings['angle_degrees']}°, ascend {settings['ascend']}",
            ),
            ("seconds", round(self.seconds_total, 2)),
        ]


def write_invariances(model: Model, request: InvariancesRequest) -> InvariancesResult:
    """Render the optimum of the request's unit, optionally move it ``ascend`` steps up its
    sphere, then find its k invariances and k most selective directions on the response's
    level set there. With ``request.out``, written there as :meth:`InvariancesResult.save`
    does (strips, GIFs, spectrum, npz, summary.json), the folder made once every input is
    checked; without, nothing is written."""
    r, unit, settings = request, request.unit, request.settings
    seed_everything(r.seed)
    loaded = model.to(resolve_device(r.device))
    f, index, _ = unit.response(loaded, settings.size)
    smooth_f, replaced = _surrogate_response(loaded, unit, settings.size, r.scale.softplus)
    side = (settings.size, settings.size) if settings.size else loaded.card.input_size
    check_k(r.k, loaded.card.channels * side[0] * side[1])
    skip = settings.skip_gradient if "skip_gradient" in r.given else 1.0
    check_model_hooks(loaded.module, settings.ghost, settings.bn_prior, skip)
    out = None if r.out is None else prepare_out_dir(r.out)
    seed_everything(r.seed)
    began = time.perf_counter()
    rendered: RenderResult = unit.render(loaded, index, settings, r.seed, r.show_progress)
    basis = _basis(r.basis, settings)
    point, ascent = _ascend(basis, smooth_f or f, rendered.images[0].to(loaded.device), r.ascend)
    found = invariances(smooth_f or f, point, r.k, r.scale, r.seed, level_set=True, basis=basis)
    angles = torch.linspace(0.0, r.angle, r.frames).tolist()
    walked, paths = _paths(f, found, angles, loaded.device, r.seed)
    rows = _direction_rows(walked, angles)
    result = _result(loaded, r, index, rendered, found, (paths, walked, angles, rows), ascent)
    if smooth_f is not None:  # the Hessian is the surrogate's; the paths show the network
        network = float(responses(f, found.image[None].to(loaded.device))[0])
        result.surrogate = {"relus_replaced": replaced, "response_of_network": network}
    result.seconds_total = time.perf_counter() - began
    if out is not None:
        result.save(out)
    return result


def _ascend(basis: PixelBasis, f: Response, x: torch.Tensor, steps: int):
    """``steps`` of :func:`ascend_on_sphere` in the basis's coordinates; the image reached."""
    if not steps:
        return x, ascend_on_sphere(f, x, 0)[1]
    point, record = ascend_on_sphere(basis.response(f), basis.coordinates(x), steps)
    with torch.no_grad():
        return basis.pixels(point), record


def _surrogate_response(loaded: Model, unit: Unit, size: int | None, beta: float):
    """The unit's response in the softplus surrogate and the ReLUs it replaced (None, 0: off)."""
    if not beta:
        return None, 0
    from convsight.analysis.surrogate import softplus_surrogate

    surrogate, replaced = softplus_surrogate(loaded, beta)
    return unit.response(surrogate, size)[0], replaced


def _result(loaded, request, index, rendered, found, drawn, ascent) -> InvariancesResult:
    """The result (``drawn``: the paths, their angles and the JSON rows), before the
    surrogate's numbers and the time."""
    unit, settings, seed = request.unit, request.settings, request.seed
    paths, walked, angles, rows = drawn
    render = {**settings.to_dict(), "seed": seed, "device": str(loaded.device)}
    return InvariancesResult(
        model=loaded.card.name,
        weights=str(request.weights) if request.weights else None,
        unit={
            "kind": unit.kind,
            "layer": unit.layer,
            "channel": unit.channel,
            "class": index,
            "label": None if index is None else loaded.card.label(index),
        },
        objective="the channel's mean activation"
        if index is None
        else "the class score before softmax",
        head=loaded.card.head,
        render={
            "objective": rendered.description,
            "value": float(rendered.values[0]),
            "dead": bool(rendered.dead),
            "seconds": rendered.seconds,
        },
        found=found,
        paths=paths,
        walked=walked,
        angles=angles,
        directions=rows,
        torch_threads=torch.get_num_threads(),
        ascent=ascent,
        settings={**found.scale.to_dict(), "render": render, "k": request.k}
        | {"ascend": request.ascend, "frames": request.frames, "angle_degrees": request.angle}
        | {"basis": request.basis},
    )
