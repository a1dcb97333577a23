"""The coordinates a unit's Hessian is taken in: pixels, or the render's Fourier image basis.

In the pixel basis a direction is a change of single pixels. In the Fourier basis it is a
change of :class:`~convsight.optvis.param.FourierImage`'s parameters, the basis the renders
are optimized in: the image is sigmoid(colour(irfft(s ⊙ rfft(z)) / 4)), with s the 1/f^decay
scale of each frequency and colour Lucid's decorrelated colour (3-channel images). Its
coordinates z are a real image, C x H x W like the pixels (rfft(z) is FourierImage's spectrum:
the rfft's redundant coefficients, which change no pixel, are left out, so no direction is
spuriously free). A unit step in z is white noise in the decorrelated, frequency-scaled space:
in pixels, an image with natural-image statistics (1/f spectrum, correlated colour), not a
single pixel. :meth:`FourierBasis.coordinates` inverts the map as ``FourierImage.from_pixels``
does (pixels clipped into the sigmoid's open range by ``eps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convsight.analysis.sphere_hessian import Response
from convsight.errors import ConvsightError
from convsight.optvis.param import COLOR_CORRELATION, rfft2d_freqs

#: The bases :func:`image_basis` knows.
BASES = ("pixel", "fourier")


class PixelBasis:
    """The pixels themselves ([0, 1]): the identity."""

    name = "pixel"

    def coordinates(self, pixels: torch.Tensor) -> torch.Tensor:
        """The coordinates of an image (C x H x W or N x C x H x W)."""
        return pixels

    def pixels(self, coordinates: torch.Tensor) -> torch.Tensor:
        """The image of coordinates (C x H x W or N x C x H x W), differentiable."""
        return coordinates

    def response(self, f: Response) -> Response:
        """The unit as a function of the coordinates (N x C x H x W -> N)."""
        return f

    def to_dict(self) -> dict[str, Any]:
        """The basis, for a JSON summary."""
        return {"name": self.name, "coordinates": "pixels in [0, 1]"}


@dataclass(frozen=True)
class FourierBasis(PixelBasis):
    """FourierImage's parameters as a real image z (see the module docstring): ``decorrelate``
    colour and the spectrum's ``decay_power`` as the render's FourierImage has them."""

    decorrelate: bool = True
    decay_power: float = 1.0
    eps: float = 1e-3

    name = "fourier"

    def _scale(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """FourierImage's 1/f^decay scale of each rfft coefficient (H x W//2+1)."""
        freqs = rfft2d_freqs(h, w)[:, : w // 2 + 1]
        scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power
        return torch.tensor(scale, dtype=like.dtype, device=like.device)

    def _colour(self, t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Decorrelated channels to RGB (or back) for a 3-channel image; else unchanged."""
        if not self.decorrelate or t.shape[-3] != 3:
            return t
        colour = COLOR_CORRELATION.to(t.device, t.dtype)
        colour = torch.linalg.inv(colour) if inverse else colour
        return torch.einsum("...chw,dc->...dhw", t, colour)

    def pixels(self, coordinates: torch.Tensor) -> torch.Tensor:
        """sigmoid(colour(irfft(s ⊙ rfft(z)) / 4)): FourierImage's image of the spectrum rfft(z)."""
        h, w = coordinates.shape[-2:]
        spectrum = torch.fft.rfftn(coordinates, dim=(-2, -1), norm="ortho")
        spectrum = spectrum * self._scale(h, w, coordinates)
        t = torch.fft.irfftn(spectrum, s=(h, w), dim=(-2, -1), norm="ortho") / 4.0
        return torch.sigmoid(self._colour(t))

    def coordinates(self, pixels: torch.Tensor) -> torch.Tensor:
        """z whose image is ``pixels`` (clipped to [eps, 1 - eps]), as FourierImage.from_pixels."""
        h, w = pixels.shape[-2:]
        t = self._colour(torch.logit(pixels.clamp(self.eps, 1 - self.eps)), inverse=True)
        spectrum = torch.fft.rfftn(4.0 * t, dim=(-2, -1), norm="ortho")
        spectrum = spectrum / self._scale(h, w, pixels)
        return torch.fft.irfftn(spectrum, s=(h, w), dim=(-2, -1), norm="ortho")

    def response(self, f: Response) -> Response:
        def in_fourier(z: torch.Tensor) -> torch.Tensor:
            return f(self.pixels(z))

        return in_fourier

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "coordinates": "the render's FourierImage parameters as a real image z: pixels = "
            "sigmoid(colour(irfft(1/f^decay * rfft(z)) / 4))",
            "decorrelate": self.decorrelate,
            "decay_power": self.decay_power,
        }


def image_basis(name: str, decorrelate: bool = True, decay_power: float = 1.0) -> PixelBasis:
    """The basis called ``name`` (``pixel`` or ``fourier``); one sentence for another name."""
    if name == "pixel":
        return PixelBasis()
    if name == "fourier":
        return FourierBasis(bool(decorrelate), float(decay_power))
    raise ConvsightError(f"--basis must be one of {', '.join(BASES)}, not '{name}'")
