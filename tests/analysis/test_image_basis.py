"""The Fourier image basis is the render's parameterization, in real coordinates."""

from __future__ import annotations

import pytest
import torch

from convsight.analysis.image_basis import FourierBasis, PixelBasis, image_basis
from convsight.errors import ConvsightError
from convsight.optvis.param import FourierImage


@pytest.mark.parametrize("decorrelate", [True, False])
def test_fourier_basis_draws_what_fourier_image_draws(decorrelate):
    z = 0.2 * torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(0))  # unsaturated
    basis = FourierBasis(decorrelate, decay_power=1.5)
    spectrum = torch.view_as_real(torch.fft.rfftn(z, dim=(-2, -1), norm="ortho"))
    image = FourierImage(spectrum, (16, 12), decorrelate, decay_power=1.5).pixels()
    assert torch.allclose(basis.pixels(z), image, atol=1e-6)
    back = basis.coordinates(image[0].detach())  # as FourierImage.from_pixels inverts it
    assert torch.allclose(back, z[0], atol=1e-4)
    fitted = FourierImage.from_pixels(image[:1].detach(), decorrelate, decay_power=1.5)
    spectrum = torch.view_as_complex(fitted.spectrum[0].contiguous())
    assert torch.allclose(torch.fft.rfftn(back, dim=(-2, -1), norm="ortho"), spectrum, atol=1e-4)


def test_fourier_basis_is_differentiable_in_double_precision():
    basis = FourierBasis()
    z = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(basis.response(lambda p: p.sum((1, 2, 3)))(z).sum(), z)
    assert grad.dtype == torch.float64 and float(grad.abs().sum()) > 0
    one_channel = torch.rand(1, 8, 8, dtype=torch.float64) * 0.8 + 0.1  # no colour to undo
    assert torch.allclose(basis.pixels(basis.coordinates(one_channel)), one_channel)


def test_image_basis_by_name():
    assert isinstance(image_basis("pixel"), PixelBasis)
    assert image_basis("fourier", False, 2.0) == FourierBasis(False, 2.0)
    assert image_basis("fourier").to_dict()["name"] == "fourier"
    with pytest.raises(ConvsightError, match="--basis must be one of pixel, fourier") as info:
        image_basis("nonsense")
    assert "\n" not in str(info.value)
