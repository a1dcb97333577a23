"""Invariances around an optimum: eigen-directions of a unit's Hessian on the sphere.

Berkes and Wiskott (2006, https://doi.org/10.1162/neco.2006.18.8.1868) described a quadratic
unit by how its response curves on the sphere of its optimum's norm: along its invariances
the response falls least, along what it is most selective to it falls most. The study asks
the same of a network's units ("the Hessian of a given unit may be computed numerically around
the optimal response"). A unit is any ``f(pixels) -> one value per row``; for a network, the
mean activation of a channel or a class score before softmax of the pixel-space image ([0, 1],
the space the optimization works in): :func:`channel_response`, :func:`class_response`.

The Hessian on the sphere |y| = r through x (r = |x|) is the Riemannian Hessian

    Hess f(x) = P (H - (g·x / r²) I) P,      P = I - x xᵀ / r²,

H and g being f's Hessian and gradient at x; the second term is the sphere's own curvature
(at a constrained maximum g = λx and it is -λ). Along the geodesic from x with unit tangent
v the response is f + t g·v + t²/2 vᵀ Hess f(x) v + O(t³), at any x on the sphere.

Where the analysis is done: at the point given, the render (the optimum ``maximize`` /
``classviz`` found). A render is not a stationary point on its sphere (|P g| > 0: the
regularized, transformed objective it climbed is not f, and f keeps rising for hundreds of
geodesic steps, far from the image), so along a tangent direction the first-order term t g·v
swamps the curvature. So for a render (``level_set=True``, what the command and the atlas
use) the directions are taken on the response's level set within the sphere, v ⊥ x and
v ⊥ P g, along which f does not change to first order: there the second-order term above is
the whole change, and the eigenvalues say exactly how fast the response falls (or rises)
around the render. At a stationary point (P g below :data:`STATIONARY` of |g|) this is the
plain tangent space, as in Berkes and Wiskott. :func:`invariances` takes the plain tangent
space by default: near a true optimum P g is the estimate's noise and may lie along an
invariance (a smoothed Hessian's does, in the complex-cell test).

It is solved in that subspace itself (an orthonormal basis of it from Householder
reflections, so the removed directions, where the projected operator has a spurious 0, never
compete): the largest eigenvalues are the invariances, the smallest the most selective
directions, found by scipy's Lanczos (``eigsh`` on a ``LinearOperator``) from Hessian-vector
products; H is never formed.

The scale. A ReLU / max-pool network is piecewise linear: its exact Hessian is zero almost
everywhere. The Hessian is computed "numerically", at a stated scale (:class:`HessianScale`):

* finite differences of gradients (default): Hv ≈ |v| (g(x + s v̂) - g(x - s v̂)) / 2s, the
  step s = h √n (``h``: RMS change per pixel, n pixels): f's curvature seen at the scale h;
* the Hessian of the Gaussian-smoothed response f_σ(x) = E f(x + σε) (``sigma`` > 0): the same
  differences averaged over ``samples`` draws x + σε_i, and g likewise. The draws are made once
  and shared by every product (common random numbers), so the estimate is one fixed map, as
  Lanczos needs (Stein estimators were not chosen: their variance grows with the pixels and
  their sample matrix is not symmetric);
* the exact Hessian of a softplus surrogate (``softplus`` β > 0, see
  :mod:`convsight.analysis.surrogate`): every ReLU becomes softplus(βx)/β; double backward.

For a smooth f both agree with the exact Hessian up to O(h²) (tests compare with torch's double
backward). For a piecewise-linear f a difference of gradients counts the kinks its step
crosses, so the product is linear in v only on average (on VGG16 ``features.28`` at 32 px,
|A(v1 + v2) - A v1 - A v2| is 43-85% of |A v1| + |A v2| for h from 1e-3 to 0.2, 22% smoothed
with sigma 0.05 and 32 samples): Lanczos on such a map returns pairs that are not eigenpairs.
The surrogate is linear by construction. Every result carries its :class:`OperatorCheck`
(linearity, symmetry, each direction's residual; 3 + 2k products): reliable or not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from convsight.analysis.image_basis import PixelBasis
from convsight.analysis.operator_check import OperatorCheck, check_operator
from convsight.analysis.sphere_hessian import (
    STATIONARY,
    HessianScale,
    Response,
    SphereHessian,
    gradients,
)
from convsight.analysis.tangent_basis import TangentBasis
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.forward import Forward, probe_shapes
from convsight.optvis.objectives import Context, Objective

__all__ = [  # the Hessian's parts live in sphere_hessian; they are named here as before
    "STATIONARY",
    "HessianScale",
    "Invariances",
    "Response",
    "SphereHessian",
    "channel_response",
    "check_k",
    "class_response",
    "gradients",
    "invariances",
    "objective_response",
    "sphere_operator",
]

# --- units ------------------------------------------------------------------------------------


def objective_response(model: Model, objective: Objective) -> Response:
    """``objective`` of pixel-space images, run as a render runs it: normalized with the card,
    the forward truncated at the layer (for a conv channel, only that channel computed)."""
    forward = Forward(model, objective, slice_channels=True)

    def response(pixels: torch.Tensor) -> torch.Tensor:
        inputs = model.normalize(pixels)
        return objective(Context(forward(inputs), pixels, inputs, sliced=forward.sliced))

    return response


def channel_response(model: Model, layer: str, channel: int, size: int | None = None) -> Response:
    """The mean activation of ``channel`` of ``layer``; an unknown layer or a channel out of
    range fails here (one forward of a zero image ``size`` pixels square, or the card's)."""
    objective = obj.channel(layer, int(channel))
    h, w = (size, size) if size else model.card.input_size
    probe = torch.zeros(1, model.card.channels, h, w, device=model.device)
    objective.check(probe_shapes(model, objective, probe), 1)
    return objective_response(model, objective)


def class_response(model: Model, target: int | str) -> Response:
    """The score of class ``target`` (index or label) before softmax."""
    index = model.class_index(target)
    return objective_response(model, obj.class_score(index, label=model.card.label(index)))


# --- Hessian-vector products ------------------------------------------------------------------


def check_k(k: int, dim: int) -> None:
    """k directions of each kind must fit the dim - 2 level-set directions (Lanczos: k below
    their number)."""
    if k < 1:
        raise ConvsightError(f"--k must be at least 1, not {k}")
    if k > dim - 3:
        raise ConvsightError(
            f"--k {k} is too large: an image of {dim} values has {dim - 2} directions on the "
            f"response's level set within its sphere, so k may be at most {dim - 3}"
        )


def sphere_operator(hessian: SphereHessian) -> tuple[LinearOperator, TangentBasis]:
    """The Riemannian Hessian as a symmetric operator on the coordinates of the directions
    analysed: the n - 1 tangent ones, or the n - 2 on the level set."""
    x = hessian.x
    vectors = [x, *([] if hessian.normal is None else [hessian.normal])]
    basis = TangentBasis(*(v.flatten().double().cpu().numpy() for v in vectors))

    def matvec(y: np.ndarray) -> np.ndarray:
        v = basis.embed(np.asarray(y, dtype=np.float64).ravel())
        t = torch.from_numpy(v).to(x.device, x.dtype).reshape(x.shape)
        w = hessian.hessian_product(t) - hessian.radial * t
        return basis.restrict(w.flatten().double().cpu().numpy())

    dim = x.numel() - len(vectors)
    return LinearOperator((dim, dim), matvec=matvec, dtype=np.float64), basis


def _extreme_pairs(
    operator: LinearOperator, k: int, seed: int, tol: float, maxiter: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The k largest and k smallest eigenpairs (ascending; fewer if Lanczos stopped early),
    and how many converged: one run for both ends when 2k fits, else one per end."""
    dim = operator.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(dim)
    runs = [("BE", 2 * k)] if 2 * k < dim else [("LA", k), ("SA", k)]
    values, vectors = [], []
    for which, count in runs:
        try:
            w, y = eigsh(operator, k=count, which=which, v0=v0, tol=tol, maxiter=maxiter)
        except ArpackNoConvergence as exc:
            w, y = exc.eigenvalues, exc.eigenvectors
        values.append(w)
        vectors.append(y)
    w, y = np.concatenate(values), np.concatenate(vectors, axis=1)
    order = np.argsort(w)
    return w[order], y[:, order], len(w)


@dataclass
class Invariances:
    """Eigen-directions of the Riemannian Hessian at ``point`` (unit tangent vectors shaped
    like it): ``invariant`` (the response falls least first) and ``selective`` (falls most
    first), with their eigenvalues; the response there, the radius, the radial term g·x/r²,
    |P g| (0 at an exact optimum), ``normal`` (P g / |P g| when the directions were kept on
    the level set, ⊥ to it; None at a stationary point or when not asked for), the scale,
    products used, pairs converged, seconds, the :class:`OperatorCheck` of the numerical
    operator (None when not asked for) and the ``basis`` the Hessian was taken in (``point``,
    the directions and ``normal`` are in its coordinates; :attr:`image` is the point's image)."""

    point: torch.Tensor
    value: float
    radius: float
    radial: float
    tangent_gradient_norm: float
    invariant: torch.Tensor
    invariant_values: torch.Tensor
    selective: torch.Tensor
    selective_values: torch.Tensor
    scale: HessianScale = field(default_factory=HessianScale)
    products: int = 0
    converged: int = 0
    seconds: float = 0.0
    check: OperatorCheck | None = None
    normal: torch.Tensor | None = None
    basis: PixelBasis = field(default_factory=PixelBasis)

    @property
    def image(self) -> torch.Tensor:
        """The point's image in pixels (the point itself in the pixel basis)."""
        with torch.no_grad():
            return self.basis.pixels(self.point)

    @property
    def reliable(self) -> bool | None:
        """Whether the check passed (None: not checked)."""
        return None if self.check is None else self.check.reliable

    def summary(self) -> dict[str, Any]:
        """The numbers, for a JSON summary."""
        return {
            "basis": self.basis.to_dict(),
            "response": self.value,
            "radius": self.radius,
            "radial_term": self.radial,
            "tangent_gradient_norm": self.tangent_gradient_norm,
            "directions_taken": "on the level set (⊥ x and P g: no first-order change)"
            if self.normal is not None
            else "tangent to the sphere (⊥ x)",
            "invariant_eigenvalues": self.invariant_values.tolist(),
            "selective_eigenvalues": self.selective_values.tolist(),
            "scale": self.scale.to_dict(),
            "hessian_vector_products": self.products,
            "eigenpairs_converged": self.converged,
            "seconds": self.seconds,
            "check": None if self.check is None else self.check.to_dict(),
        }


def _directions(basis: TangentBasis, y: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Tangent coordinates (dim x m) -> m unit directions shaped like ``like``, each signed so
    that its largest entry is positive."""
    rows = []
    for column in y.T:
        v = basis.embed(column)
        v = v / np.linalg.norm(v)
        rows.append(v if v[np.argmax(np.abs(v))] >= 0 else -v)
    flat = np.stack(rows) if rows else np.zeros((0, like.numel()))
    return torch.from_numpy(flat).to(like.dtype).reshape(len(rows), *like.shape)


def _hessian_kind(scale: HessianScale) -> type[SphereHessian]:
    """The exact Hessian of the softplus surrogate when ``scale`` asks for it, else the
    smoothed finite-difference one."""
    if scale.softplus:
        from convsight.analysis.surrogate import ExactSphereHessian

        return ExactSphereHessian
    return SphereHessian


def invariances(
    f: Response,
    x: torch.Tensor,
    k: int = 4,
    scale: HessianScale | None = None,
    seed: int = 0,
    tol: float = 1e-3,
    maxiter: int | None = None,
    batch: int = 0,
    check: bool = True,
    level_set: bool = False,
    basis: PixelBasis | None = None,
) -> Invariances:
    """The k invariances and k most selective directions of unit ``f`` at ``x`` (C x H x W)
    on the sphere |y| = |x|, from Lanczos on Hessian-vector products at ``scale``; with
    ``level_set`` only directions with no first-order change, unless x is stationary (see the
    module docstring): for a render. Near a true optimum leave it off: P g is the estimate's
    noise there and may lie along an invariance. ``tol`` is Lanczos's relative tolerance,
    ``maxiter`` its restarts (scipy's default when None), ``batch`` the rows per gradient pass
    (0: auto); ``check`` adds the :class:`OperatorCheck` (3 + 2k products); ``basis``: the
    coordinates (:mod:`convsight.analysis.image_basis`; default the pixels) the Hessian, the
    result's point and directions are in (x is the image). Inputs are checked before any work.
    """
    scale, basis = scale or HessianScale(), basis or PixelBasis()
    scale.check()
    check_k(k, x.numel())
    began = time.perf_counter()
    point = basis.coordinates(x.detach())
    hessian = _hessian_kind(scale)(basis.response(f), point, scale, seed, batch)
    if level_set:
        hessian.restrict_to_level_set()
    operator, tangent = sphere_operator(hessian)
    values, coords, converged = _extreme_pairs(operator, k, seed, tol, maxiter)
    directions = _directions(tangent, coords, hessian.x.cpu())
    high = min(k, (len(values) + 1) // 2)
    low = min(k, len(values) - high)
    found = Invariances(
        point=hessian.x.cpu(),
        value=hessian.value,
        radius=hessian.radius,
        radial=hessian.radial,
        tangent_gradient_norm=hessian.tangent_gradient_norm,
        invariant=directions.flip(0)[:high],
        invariant_values=torch.from_numpy(values[::-1][:high].copy()),
        selective=directions[:low],
        selective_values=torch.from_numpy(values[:low].copy()),
        scale=scale,
        converged=converged,
        normal=None if hessian.normal is None else hessian.normal.cpu(),
        basis=basis,
    )
    if check:
        found.check = check_operator(
            hessian,
            torch.cat([found.invariant, found.selective]),
            torch.cat([found.invariant_values, found.selective_values]),
            seed,
        )
    found.products, found.seconds = hessian.products, time.perf_counter() - began
    return found
