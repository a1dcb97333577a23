"""Job behind ``convsight invariances``: render a unit's optimum, find its invariances, write.

Every input (model, unit, k, the Hessian's scale, frames, render settings, output folder) is
checked before the optimum is rendered; nothing is written for bad input. The analysis is at
the render, on the response's level set within its sphere (see
:mod:`convsight.analysis.invariances`); ``ascend`` > 0 first moves it up the sphere. The
frames of each direction follow the sphere x(t) = cos t · x + sin t · r · v̂ from the optimum
(t from 0 to ``angle``); they are clipped to [0, 1] only to be shown (the JSON gives the
response on the sphere and on the clipped image).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


def sphere_path(x: torch.Tensor, direction: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Points x(t) = cos t · x + sin t · r · v̂ (r = |x|, v̂ the unit direction, t in radians)
    on the sphere through x: T x C x H x W, not clipped."""
    x = x.detach()
    unit = direction.to(x) / direction.norm()
    shape = (-1,) + (1,) * x.dim()
    t = angles.to(x).reshape(shape)
    return torch.cos(t) * x + torch.sin(t) * x.norm() * unit


@torch.no_grad()
def responses(f: Response, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """f of each image (N x C x H x W), ``batch`` at a time."""
    return torch.cat([f(chunk).detach() for chunk in images.split(max(1, batch))])


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


def random_tangents(
    x: torch.Tensor, count: int, seed: int, normal: torch.Tensor | None = None
) -> torch.Tensor:
    """``count`` random unit directions tangent to the sphere at ``x`` (and ⊥ ``normal``, the
    unit tangent gradient, when the directions were taken on the level set): the baseline
    that invariant and selective directions are judged against, drawn where they were."""
    noise = torch.randn((count, *x.shape), generator=torch.Generator().manual_seed(seed + 2))
    flat = noise.to(x).flatten(1)
    for axis in (x, *(() if normal is None else (normal.to(x),))):
        unit = axis.flatten() / axis.norm()
        flat = flat - torch.outer(flat @ unit, unit)
    return (flat / flat.norm(dim=1, keepdim=True)).reshape(noise.shape)


def _paths(
    f: Response, found: Invariances, frames: int, angle: float, device: torch.device, seed: int
) -> dict[str, dict[str, torch.Tensor]]:
    """For each kind (invariant, selective, random): the frames (m x T x C x H x W, on the
    sphere) and the response on the sphere and on the clipped frames (m x T)."""
    angles = torch.linspace(0.0, math.radians(angle), frames, dtype=torch.float64)
    result = {}
    kinds = {"invariant": found.invariant, "selective": found.selective}
    kinds["random"] = random_tangents(found.point, len(found.invariant), seed, found.normal)
    for kind, directions in kinds.items():
        path = [sphere_path(found.point, v, angles) for v in directions]
        images = torch.stack(path) if path else found.point.new_zeros(0, frames, *found.point.shape)
        flat = images.flatten(0, 1).float()
        on_sphere = responses(f, flat.to(device)).reshape(len(path), frames)
        clipped = responses(f, flat.clamp(0, 1).to(device)).reshape(len(path), frames)
        result[kind] = {"images": images, "on_sphere": on_sphere.cpu(), "clipped": clipped.cpu()}
    return result


def _direction_rows(found: Invariances, paths: dict, angles: list[float]) -> list[dict[str, Any]]:
    """The JSON row of each direction: its eigenvalue, the responses along its path and the
    names of its strip and GIF."""
    rows = []
    for kind in ("invariant", "selective"):
        for i, eigenvalue in enumerate(getattr(found, f"{kind}_values").tolist()):
            stem = f"{kind}_{i + 1:02d}"
            rows.append(
                {
                    "kind": kind,
                    "rank": i + 1,
                    "eigenvalue": eigenvalue,
                    "angles_degrees": angles,
                    "response_on_sphere": paths[kind]["on_sphere"][i].tolist(),
                    "response_clipped": paths[kind]["clipped"][i].tolist(),
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
    the device. ``weights`` says where the model came from (recorded, not read). Checked when
    made."""

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

    def __post_init__(self) -> None:
        if self.ascend < 0:
            raise ConvsightError(f"--ascend must be 0 or more, not {self.ascend}")
        self.unit.check()
        self.scale.check()
        check_frames(self.frames, self.angle)


@dataclass(kw_only=True)
class InvariancesResult(Result):
    """The analysis: the model, the unit, the render of its optimum, ``found`` (the point, the
    directions and their eigenvalues, the operator check), the paths' frames and responses
    (``paths[kind]["images"]``, m x T x C x H x W), the rows of the directions, the ascent and
    the settings; ``surrogate``: the softplus surrogate's numbers (None: not used)."""

    model: str
    weights: str | None
    unit: dict[str, Any]
    objective: str
    head: Any
    render: dict[str, Any]
    found: Invariances
    paths: dict[str, dict[str, torch.Tensor]]
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
        written = write_outputs(folder, self.found, self.paths, self.angles, title)
        written.append(write_json(folder / "summary.json", self.to_json(), within=folder))
        self.files = written
        return written

    def tiles(self) -> list[Tile]:
        """The optimum, then the end of each direction's path (its last frame, clipped)."""
        tiles = [Tile(self.found.point.clamp(0, 1), f"optimum: {self.found.value:.3g}")]
        for row in self.directions:
            kind, rank = row["kind"], row["rank"]
            frame = self.paths[kind]["images"][rank - 1][-1].clamp(0, 1)
            end, value = row["angles_degrees"][-1], row["response_on_sphere"][-1]
            tiles.append(Tile(frame, f"{kind} {rank}, {end:.0f}°: {value:.3g}"))
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The model, unit, response, eigenvalues, whether they are reliable, the settings."""
        found, settings = self.found, self.settings
        return [
            ("model", self.model),
            ("unit", self.unit_name),
            ("objective", self.objective),
            ("response", f"{found.value:.4g}"),
            ("invariant eigenvalues", ", ".join(f"{v:.3g}" for v in found.invariant_values)),
            ("selective eigenvalues", ", ".join(f"{v:.3g}" for v in found.selective_values)),
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
    point, ascent = ascend_on_sphere(smooth_f or f, rendered.images[0].to(loaded.device), r.ascend)
    found = invariances(smooth_f or f, point, r.k, r.scale, seed=r.seed, level_set=True)
    angles = torch.linspace(0.0, r.angle, r.frames).tolist()
    paths = _paths(f, found, r.frames, r.angle, loaded.device, r.seed)
    rows = _direction_rows(found, paths, angles)
    result = _result(loaded, r, index, rendered, found, (paths, angles, rows), ascent)
    if smooth_f is not None:  # the Hessian is the surrogate's; the paths show the network
        network = float(responses(f, found.point[None].to(loaded.device))[0])
        result.surrogate = {"relus_replaced": replaced, "response_of_network": network}
    result.seconds_total = time.perf_counter() - began
    if out is not None:
        result.save(out)
    return result


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
    paths, angles, rows = drawn
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
        angles=angles,
        directions=rows,
        torch_threads=torch.get_num_threads(),
        ascent=ascent,
        settings={**found.scale.to_dict(), "render": render, "k": request.k}
        | {"ascend": request.ascend, "frames": request.frames, "angle_degrees": request.angle},
    )
