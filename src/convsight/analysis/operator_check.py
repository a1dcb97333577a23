"""How far a numerical Hessian on the sphere is from a symmetric linear map: the check every
invariance result carries (reliable or not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from convsight.analysis.sphere_hessian import SphereHessian

#: Largest relative error (linearity, symmetry, residuals) of a result called reliable.
RELIABLE = 0.1


@dataclass(frozen=True)
class OperatorCheck:
    """How far the numerical operator A (the Riemannian Hessian at the scale) is from a
    symmetric linear map, relative to |A v|: ``linearity`` |A(v1 + v2) - A v1 - A v2| and
    ``symmetry`` |v1·A v2 - v2·A v1| for random unit tangent v1, v2; ``residuals``
    |A v - λ v| / max |λ| of each direction found (invariant ones first)."""

    linearity: float
    symmetry: float
    residuals: tuple[float, ...] = ()

    @property
    def reliable(self) -> bool:
        worst = max((self.linearity, self.symmetry, *self.residuals))
        return bool(worst <= RELIABLE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "linearity_error": self.linearity,
            "symmetry_error": self.symmetry,
            "eigen_residuals": list(self.residuals),
            "reliable": self.reliable,
            "reliable_below": RELIABLE,
        }


def check_operator(
    hessian: SphereHessian,
    directions: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    seed: int = 0,
) -> OperatorCheck:
    """:class:`OperatorCheck` of ``hessian`` (3 products, and one per direction given)."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = hessian.x
    v1, v2 = (
        hessian.tangent(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
        for _ in range(2)
    )
    v1, v2 = v1 / v1.norm(), v2 / v2.norm()
    a1, a2 = hessian.riemannian_product(v1), hessian.riemannian_product(v2)
    a12 = hessian.riemannian_product(v1 + v2)
    size = float(a1.norm() + a2.norm()) or 1.0
    linearity = float((a12 - a1 - a2).norm()) / size
    symmetry = abs(float((v1 * a2).sum() - (v2 * a1).sum())) / size
    residuals: list[float] = []
    if directions is not None and values is not None and len(values):
        spread = float(values.abs().max()) or 1.0
        for v, value in zip(directions, values.tolist(), strict=True):
            v = v.to(x)
            residuals.append(float((hessian.riemannian_product(v) - value * v).norm()) / spread)
    return OperatorCheck(linearity, symmetry, tuple(residuals))
