"""The numerical Hessian on the sphere, in its own module (no import circle with invariances)."""

import subprocess
import sys

import pytest
import torch

from convsight.analysis import invariances
from convsight.analysis.sphere_hessian import HessianScale, SphereHessian, gradients


def test_invariances_names_the_same_objects():
    assert invariances.SphereHessian is SphereHessian
    assert invariances.HessianScale is HessianScale and invariances.gradients is gradients


def test_hessian_product_of_a_quadratic():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2)

    def f(p):  # sum of w x^2: H = 2 diag(w)
        return (weights * p**2).flatten(1).sum(1)

    x = torch.ones(1, 2, 2)
    v = torch.tensor([1.0, -1.0, 0.5, 0.0]).reshape(1, 2, 2)
    hessian = SphereHessian(f, x, HessianScale(h=1e-3))
    torch.testing.assert_close(hessian.hessian_product(v), 2 * weights * v, atol=1e-3, rtol=1e-3)
    assert hessian.products == 1 and hessian.value == 10.0


@pytest.mark.slow
def test_sphere_hessian_imports_without_invariances():
    code = (
        "import sys, convsight.analysis.sphere_hessian, convsight.analysis.surrogate, "
        "convsight.analysis.operator_check\n"
        "assert 'convsight.analysis.invariances' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
