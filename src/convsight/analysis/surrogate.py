"""A smooth stand-in for a ReLU network, whose Hessian is exact and linear.

A ReLU network's Hessian is zero almost everywhere, and finite differences of its gradients
are not a linear map (see :mod:`convsight.analysis.invariances`), so Lanczos on them is not
sound. The surrogate replaces every ``nn.ReLU`` by softplus(βx)/β, which is within log(2)/β of
the ReLU everywhere and has a true second derivative β σ(βx)(1 - σ(βx)), concentrated within
about 1/β of each kink: β is the scale at which the curvature is seen (in activation units).
Hessian-vector products of the surrogate come from double backward, exactly (to float
rounding), so the operator Lanczos sees is linear and symmetric. Max pooling is left as it is:
at a given input it selects fixed positions, and its own second derivative is zero there.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from convsight.analysis.sphere_hessian import SphereHessian
from convsight.errors import ConvsightError
from convsight.models import Model


def softplus_surrogate(model: Model, beta: float) -> tuple[Model, int]:
    """A copy of ``model`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)``, and how
    many were replaced; fails in one sentence when there is none to replace."""
    if not beta > 0:
        raise ConvsightError(f"--softplus must be a number above 0, not {beta}")
    module = copy.deepcopy(model.module)
    names = [name for name, sub in module.named_modules() if type(sub) is nn.ReLU]
    if not names:
        raise ConvsightError("--softplus: the model has no nn.ReLU module to replace")
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, nn.Softplus(beta))
    return Model(module.eval(), model.card), len(names)


class ExactSphereHessian(SphereHessian):
    """:class:`SphereHessian` whose products are the exact Hessian of a smooth f (double
    backward), not finite differences."""

    def hessian_product(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        with torch.enable_grad():
            x = self.x[None].detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.f(x).sum(), x, create_graph=True)
            if not grad.requires_grad:  # f is linear in x (a first conv): H = 0
                return torch.zeros_like(self.x)
            (product,) = torch.autograd.grad((grad[0] * v.to(grad)).sum(), x, allow_unused=True)
        return torch.zeros_like(self.x) if product is None else product[0]
