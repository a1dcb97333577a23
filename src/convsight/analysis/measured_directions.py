"""Walk each direction of an invariance analysis and label it by the response it keeps.

The eigenvalues of the Hessian on the sphere order directions by the curvature at the point;
at a saddle, or where the Hessian is a numerical estimate, that is not the order of what the
unit does along the path a strip shows (VGG16 ``features.28`` channel 7: the direction with the
second largest eigenvalue lost half the response within 5 degrees, more than the second most
selective). So every candidate (the k largest and the k smallest eigenvalues) is walked along
its geodesic x(t) = cos t · x + sin t · r · v̂ on the sphere in the basis's coordinates, its
image drawn by the basis, the unit's response measured at each frame; then they are ordered by
the mean response along the path (all paths start at the same point, so this is the mean
fraction of the response kept): *invariant* are those that keep most, *selective* those that
lose most, whatever their eigenvalue. Each is labelled by what was measured ("keeps 97% to
10°", "loses 52% by 5°").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from convsight.analysis.sphere_hessian import Response

__all__ = [
    "LABELS",
    "Direction",
    "kept_label",
    "random_tangents",
    "rank_by_response",
    "responses",
    "sphere_path",
    "frames",
    "walk",
]

#: How the directions are labelled, for a JSON summary.
LABELS = (
    "invariant and selective as measured: every direction found (the k largest and k smallest "
    "eigenvalues) is walked on its sphere and ordered by the mean response along its path; "
    "invariant keep the most, selective lose the most; eigenvalues kept beside"
)


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


def kept_label(angles: Sequence[float], values: Sequence[float]) -> str:
    """What the response did along a path, measured: ``keeps 97% to 10°`` (the least fraction
    kept over the path, when never below half) or ``loses 52% by 5°`` (at the first frame
    where less than half is kept); for a response not above 0 at the start, its change."""
    start = values[0]
    if not start > 0:
        return f"from {start:.3g}: {values[-1] - start:+.3g} by {angles[-1]:.0f}°"
    kept = [v / start for v in values]
    for angle, fraction in zip(angles, kept, strict=True):
        if fraction < 0.5:
            return f"loses {100 * (1 - fraction):.0f}% by {angle:.0f}°"
    return f"keeps {100 * min(kept):.0f}% to {angles[-1]:.0f}°"


@dataclass
class Direction:
    """One candidate direction: its unit vector in the basis's coordinates, where its
    eigenvalue came from (``eigen_end``: ``largest`` or ``smallest``; ``eigen_rank`` from that
    end), the frames of its path in pixels (T x C x H x W, not clipped) and the response on
    them and on the frames clipped to [0, 1] (T each)."""

    vector: torch.Tensor
    eigenvalue: float
    eigen_end: str
    eigen_rank: int
    images: torch.Tensor
    on_sphere: torch.Tensor
    clipped: torch.Tensor

    @property
    def mean_response(self) -> float:
        """The mean response over the frames after the first: what the order follows."""
        return float(self.on_sphere[1:].double().mean())

    def kept(self) -> list[float] | None:
        """The fraction of the starting response at each frame (None: it is not above 0)."""
        start = float(self.on_sphere[0])
        return [float(v) / start for v in self.on_sphere] if start > 0 else None

    def label(self, angles: Sequence[float]) -> str:
        """:func:`kept_label` of its path."""
        return kept_label(angles, self.on_sphere.tolist())


def frames(
    f: Response,
    basis,
    point: torch.Tensor,
    vectors: torch.Tensor,
    degrees: list[float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frames of each direction's path from ``point`` (in ``basis``'s coordinates) to
    ``degrees[-1]`` in pixels (m x T x C x H x W) and f on them, on ``device``, and on them
    clipped to [0, 1] (m x T each; the clipped pass is skipped when nothing is outside)."""
    count = len(degrees)
    angles = torch.linspace(0.0, math.radians(degrees[-1]), count, dtype=torch.float64)
    paths = [sphere_path(point, v, angles) for v in vectors]
    if not paths:
        empty = torch.zeros(0, count)
        return point.new_zeros(0, count, *point.shape), empty, empty
    with torch.no_grad():
        images = basis.pixels(torch.stack(paths))
    flat = images.flatten(0, 1).float()
    on_sphere = responses(f, flat.to(device)).reshape(len(paths), count).cpu()
    if float(flat.min()) >= 0 and float(flat.max()) <= 1:
        return images, on_sphere, on_sphere.clone()
    clipped = responses(f, flat.clamp(0, 1).to(device)).reshape(len(paths), count)
    return images, on_sphere, clipped.cpu()


def walk(f: Response, found, degrees: list[float], device: torch.device) -> list[Direction]:
    """Every direction ``found`` (an :class:`~convsight.analysis.invariances.Invariances`)
    holds, walked on its sphere for ``degrees`` and measured with the network's ``f``."""
    vectors = torch.cat([found.invariant, found.selective])
    images, on_sphere, clipped = frames(f, found.basis, found.point, vectors, degrees, device)
    ends = [("largest", found.invariant_values), ("smallest", found.selective_values)]
    walked, i = [], 0
    for end, values in ends:
        for rank, value in enumerate(values.tolist(), start=1):
            walked.append(
                Direction(vectors[i], value, end, rank, images[i], on_sphere[i], clipped[i])
            )
            i += 1
    return walked


def rank_by_response(
    walked: list[Direction], invariant: int
) -> tuple[list[Direction], list[Direction]]:
    """The ``invariant`` directions that keep the most response, most first, and the rest,
    the one that loses most first: the labels follow what was measured, not the eigenvalues."""
    ordered = sorted(walked, key=lambda d: d.mean_response, reverse=True)
    return ordered[:invariant], ordered[invariant:][::-1]
