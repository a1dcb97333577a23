"""How the image is perturbed each step: pad, jitter, scale, rotate, colour shift, noise, blur.

Transforms act on pixel-space batches. Randomness is drawn per row from that row's own
generator (see :class:`RowRandom`), so a row's transforms do not depend on the other rows.
Consecutive geometric transforms (jitter, scale, rotate) are merged into one affine resampling
per step; each keeps the image size (zoom in or out around the centre, zero fill outside).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class RowRandom:
    """Per-row random draws: row i (and each of its ``views`` copies) uses generator i.

    Batch rows are ``view * N + row``; row i draws its ``views`` values in one call, so the
    values a row sees are the same whatever the other rows are.
    """

    def __init__(self, generators: Sequence[torch.Generator], views: int = 1) -> None:
        self.generators = list(generators)
        self.views = views

    def _draw(self, fn) -> torch.Tensor:
        per_row = torch.stack([fn(g) for g in self.generators], 1)  # views x N
        return per_row.reshape(-1)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return self._draw(lambda g: torch.rand(self.views, generator=g)) * (high - low) + low

    def integers(self, high: int) -> torch.Tensor:
        """Uniform integers in ``[0, high)``."""
        return self._draw(lambda g: torch.randint(0, high, (self.views,), generator=g))

    def choice(self, values: Sequence[float]) -> torch.Tensor:
        table = torch.tensor(list(values), dtype=torch.float32)
        return table[self.integers(len(table))]

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        """N(0, 1) tensors of ``shape``, one per batch row (``view * N + row``)."""
        per_row = torch.stack(
            [torch.randn(self.views, *shape, generator=g) for g in self.generators], 1
        )
        return per_row.reshape(-1, *shape)


class Transform:
    """Base: ``__call__(x, rng)`` for pixel work, or ``matrix(shape, rng)`` for geometry."""

    geometric = False

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        raise NotImplementedError

    def matrix(self, shape: torch.Size, rng: RowRandom) -> torch.Tensor:
        """Per-row 3x3 affine in normalized coordinates mapping output to input points."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.lower()


class Pad(Transform):
    """Pad by ``width`` pixels with a constant (Lucid: 12 px of grey)."""

    def __init__(self, width: int, value: float = 0.5) -> None:
        self.width, self.value = width, value

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        return F.pad(x, [self.width] * 4, mode="constant", value=self.value)

    def describe(self) -> str:
        return f"pad({self.width})"


class CenterCrop(Transform):
    """Crop every view to its central ``size`` (for a model that takes only its own input
    size, e.g. a flatten + dense head, after padding)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = tuple(size)

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        top, left = (x.shape[-2] - self.size[0]) // 2, (x.shape[-1] - self.size[1]) // 2
        return x[..., top : top + self.size[0], left : left + self.size[1]]

    def describe(self) -> str:
        return f"center_crop({self.size[0]}x{self.size[1]})"


class Noise(Transform):
    """Add N(0, std^2) noise to every pixel of every view (pixel space)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        return x + self.std * rng.normal(x.shape[1:]).to(x.device, x.dtype)

    def describe(self) -> str:
        return f"noise({self.std:g})"


class ColorShift(Transform):
    """Random per-channel contrast and offset (Plug-In Inversion's ColorShift).

    Each view's channels are scaled about 0.5 by ``exp(U(-a, a))`` and shifted by
    ``U(-a, a) / 4`` (``a`` in units of about one standard deviation of an ImageNet pixel), so
    the class must be readable under any colour cast. Ghiasi et al. 2022,
    https://arxiv.org/abs/2201.12961
    """

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        c, a = x.shape[1], self.amount
        scale = torch.stack([rng.uniform(-a, a) for _ in range(c)], 1).exp()
        shift = torch.stack([rng.uniform(-a, a) for _ in range(c)], 1) / 4
        scale = scale.to(x.device, x.dtype)[:, :, None, None]
        shift = shift.to(x.device, x.dtype)[:, :, None, None]
        return (x - 0.5) * scale + 0.5 + shift

    def describe(self) -> str:
        return f"color_shift({self.amount:g})"


def _eye(n: int) -> torch.Tensor:
    return torch.eye(3).repeat(n, 1, 1)


class Jitter(Transform):
    """Shift by a random whole number of pixels in ``[0, d)`` along each axis (Lucid's)."""

    geometric = True

    def __init__(self, d: int) -> None:
        self.d = d

    def matrix(self, shape: torch.Size, rng: RowRandom) -> torch.Tensor:
        h, w = shape[2:]
        dx, dy = rng.integers(self.d).float(), rng.integers(self.d).float()
        m = _eye(len(dx))
        # output pixel p shows input pixel p - d  ->  input coordinate = output - 2d/size
        m[:, 0, 2] = -2 * dx / w
        m[:, 1, 2] = -2 * dy / h
        return m

    def describe(self) -> str:
        return f"jitter({self.d})"


class RandomScale(Transform):
    """Zoom by a factor chosen from ``scales`` (>1 enlarges), keeping the image size."""

    geometric = True

    def __init__(self, scales: Sequence[float]) -> None:
        self.scales = list(scales)

    def matrix(self, shape: torch.Size, rng: RowRandom) -> torch.Tensor:
        s = rng.choice(self.scales)
        m = _eye(len(s))
        m[:, 0, 0] = 1 / s
        m[:, 1, 1] = 1 / s
        return m

    def describe(self) -> str:
        return f"scale({min(self.scales):g}-{max(self.scales):g})"


class RandomRotate(Transform):
    """Rotate by an angle (degrees) chosen from ``angles`` around the centre."""

    geometric = True

    def __init__(self, angles: Sequence[float]) -> None:
        self.angles = list(angles)

    def matrix(self, shape: torch.Size, rng: RowRandom) -> torch.Tensor:
        h, w = shape[2:]
        a = rng.choice(self.angles) * math.pi / 180
        m = _eye(len(a))
        m[:, 0, 0] = torch.cos(a)
        m[:, 0, 1] = -torch.sin(a) * h / w
        m[:, 1, 0] = torch.sin(a) * w / h
        m[:, 1, 1] = torch.cos(a)
        return m

    def describe(self) -> str:
        return f"rotate({min(self.angles):g}..{max(self.angles):g})"


class RandomFlip(Transform):
    """Mirror left-right with probability 1/2."""

    geometric = True

    def matrix(self, shape: torch.Size, rng: RowRandom) -> torch.Tensor:
        flip = rng.integers(2).float()
        m = _eye(len(flip))
        m[:, 0, 0] = 1 - 2 * flip
        return m

    def describe(self) -> str:
        return "flip"


class Compose:
    """Apply transforms in order, merging runs of geometric ones into one resampling."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        if rng.views > 1:
            x = x.repeat(rng.views, 1, 1, 1)
        pending: torch.Tensor | None = None
        for t in self.transforms:
            if t.geometric:
                m = t.matrix(x.shape, rng)
                pending = m if pending is None else pending @ m
                continue
            if pending is not None:
                x, pending = _resample(x, pending), None
            x = t(x, rng)
        if pending is not None:
            x = _resample(x, pending)
        return x

    def describe(self) -> list[str]:
        return [t.describe() for t in self.transforms]


def _resample(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = m[:, :2, :].to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# The default scales, 0.9 to 1.1 by 0.02 (a constant: mypy misreads a generator in a default).
STANDARD_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))


def standard_transforms(
    pad: int = 12,
    jitter: int = 8,
    scales: Sequence[float] = STANDARD_SCALES,
    angles: Sequence[float] = tuple(list(range(-10, 11)) + 5 * [0]),
    jitter_after: int = 4,
    noise: float = 0.0,
    flip: bool = False,
    color_shift: float = 0.0,
) -> list[Transform]:
    """Lucid's default: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4;
    then (``color_shift`` > 0) a random colour cast and (``noise`` > 0) Gaussian pixel noise
    of that standard deviation. ``flip`` mirrors half the views left-right (first of the
    geometric transforms)."""
    out: list[Transform] = []
    if pad:
        out.append(Pad(pad))
    if flip:
        out.append(RandomFlip())
    if jitter > 1:
        out.append(Jitter(jitter))
    if scales and len(scales) > 0 and set(scales) != {1}:
        out.append(RandomScale(scales))
    if angles and set(angles) != {0}:
        out.append(RandomRotate(angles))
    if jitter_after > 1:
        out.append(Jitter(jitter_after))
    if color_shift > 0:
        out.append(ColorShift(color_shift))
    if noise > 0:
        out.append(Noise(noise))
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a batch (reflect padding)."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, [radius, radius, 0, 0], mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, [0, 0, radius, radius], mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
