"""Products with a unit's numerical Hessian at a point, and the Riemannian Hessian on the
sphere through it: what :mod:`convsight.analysis.invariances` solves, what
:mod:`convsight.analysis.operator_check` checks and :mod:`convsight.analysis.surrogate` makes
exact (the mathematics and the scale: :mod:`convsight.analysis.invariances`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from convsight.errors import ConvsightError
from convsight.optvis.forward import auto_chunk

#: A unit: pixel-space images (N x C x H x W) -> one value per row (N).
Response = Callable[[torch.Tensor], torch.Tensor]


#: |P g| / |g| below this: the point is stationary on its sphere (no level-set restriction).
STATIONARY = 1e-6


@dataclass(frozen=True)
class HessianScale:
    """The scale of the numerical Hessian: the finite-difference step ``h`` (RMS change per
    pixel), Gaussian smoothing ``sigma`` (noise std per pixel; 0: none) and its ``samples``;
    or ``softplus`` β > 0: f is the response of the network with every ReLU replaced by
    softplus(βx)/β (:mod:`convsight.analysis.surrogate`) and the products are exact."""

    h: float = 0.01
    sigma: float = 0.0
    samples: int = 8
    softplus: float = 0.0

    def check(self) -> None:
        """One sentence for a step, smoothing or sample count that cannot work."""
        if not math.isfinite(self.h) or self.h <= 0:
            raise ConvsightError(f"--h must be a number above 0, not {self.h}")
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ConvsightError(f"--smooth must be 0 (off) or a number above 0, not {self.sigma}")
        if self.samples < 1:
            raise ConvsightError(f"--samples must be at least 1, not {self.samples}")
        if not math.isfinite(self.softplus) or self.softplus < 0 or self.softplus * self.sigma:
            raise ConvsightError("--softplus must be 0 (off) or above 0, and not with --smooth")

    def to_dict(self) -> dict[str, Any]:
        smooth = self.sigma > 0
        method = "finite differences of gradients" + (
            ", Gaussian-smoothed (common random numbers)" if smooth else ""
        )
        if self.softplus:
            method = "exact (double backward), every ReLU replaced by softplus(beta x)/beta"
        return {
            "h": None if self.softplus else self.h,
            "sigma": self.sigma,
            "samples": self.samples if smooth else 1,
            "softplus_beta": self.softplus or None,
            "method": method,
        }


def gradients(
    f: Response, points: torch.Tensor, batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """f and its gradient at each row of ``points`` (``batch`` rows per pass)."""
    values, grads = [], []
    for chunk in points.split(max(1, batch)):
        with torch.enable_grad():
            p = chunk.detach().requires_grad_(True)
            out = f(p)
            (grad,) = torch.autograd.grad(out.sum(), p)
        values.append(out.detach())
        grads.append(grad)
    return torch.cat(values), torch.cat(grads)


class SphereHessian:
    """Products with f's numerical Hessian at ``x`` at ``scale``, and what the Riemannian
    Hessian on the sphere |y| = |x| adds (see the module docstring)."""

    def __init__(
        self, f: Response, x: torch.Tensor, scale: HessianScale, seed: int = 0, batch: int = 0
    ) -> None:
        scale.check()
        self.f, self.x, self.scale = f, x.detach(), scale
        self.radius = float(self.x.norm())
        if not self.radius > 0:
            raise ConvsightError("the optimum is the zero image: there is no sphere to move on")
        self.step = scale.h * math.sqrt(self.x.numel())
        draws = scale.samples if scale.sigma > 0 else 1
        generator = torch.Generator().manual_seed(seed)
        eps = torch.randn((draws, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        self.noise = scale.sigma * eps  # shared by every product (common random numbers)
        rows = 2 * len(self.noise)
        self.batch = batch or auto_chunk(x.device, rows, (x.shape[-2], x.shape[-1]))
        values, grads = gradients(f, self.x + self.noise, self.batch)
        self.value, self.gradient = float(values.mean()), grads.mean(0)
        self.radial = float((self.gradient * self.x).sum()) / self.radius**2
        self.normal: torch.Tensor | None = None  # P g / |P g| once restricted to the level set
        self.products = 0

    def sphere_tangent(self, v: torch.Tensor) -> torch.Tensor:
        """P v: ``v`` without its part along x."""
        return v - (v * self.x).sum() / self.radius**2 * self.x

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` within the directions analysed: without its part along x, and along P g once
        :meth:`restrict_to_level_set` found the point not stationary."""
        v = self.sphere_tangent(v)
        if self.normal is not None:
            v = v - (v * self.normal).sum() * self.normal
        return v

    @property
    def tangent_gradient_norm(self) -> float:
        """|P g|: 0 at an exact optimum on the sphere."""
        return float(self.sphere_tangent(self.gradient).norm())

    def restrict_to_level_set(self) -> None:
        """Analyse only directions ⊥ P g as well (f unchanged to first order along them),
        unless the point is stationary (|P g| <= :data:`STATIONARY` |g|)."""
        tangent = self.sphere_tangent(self.gradient)
        norm = float(tangent.norm())
        if norm > STATIONARY * float(self.gradient.norm()):
            self.normal = tangent / norm

    def hessian_product(self, v: torch.Tensor) -> torch.Tensor:
        """H v by central differences of gradients at the scale (smoothed: averaged over the
        shared noise draws)."""
        self.products += 1
        norm = float(v.norm())
        if norm == 0:
            return torch.zeros_like(self.x)
        d = v.to(self.x.dtype) * (self.step / norm)
        points = torch.cat([self.x + self.noise + d, self.x + self.noise - d])
        _, grads = gradients(self.f, points, self.batch)
        plus, minus = grads.split(len(self.noise))
        return (plus - minus).mean(0) * (norm / (2 * self.step))

    def riemannian_product(self, v: torch.Tensor) -> torch.Tensor:
        """P (H - (g·x / r²) I) P v."""
        v = self.tangent(v)
        return self.tangent(self.hessian_product(v) - self.radial * v)
