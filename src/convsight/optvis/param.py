"""What is optimized: image parameterizations, each giving a pixel-space batch N x C x H x W.

* :class:`PixelImage` — the study's: the model input itself, started from N(0, 1) noise in the
  model's input space, from a class-mean image or from a given image.
* :class:`FourierImage` — Lucid's: a 1/f-scaled spectrum, optionally with decorrelated colour,
  squashed to [0, 1] by a sigmoid (Olah et al. 2017, https://distill.pub/2017/feature-visualization/).
* :class:`PhaseImage` — MACO's magnitude constraint (Fel et al. 2023,
  https://arxiv.org/abs/2306.06805): the magnitude spectrum is fixed (here Lucid's 1/f^decay
  profile rather than an ImageNet average) and only the phase is optimized.

Every row draws its random start from its own generator, so a row's start does not depend on
the other rows of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from convsight.models import Model

# Lucid's colour correlation of ImageNet (square root of the covariance's SVD).
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
MIN_COARSE_SIDE = 16  # a coarse step never draws images smaller than this


def row_randn(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """One N(0, 1) tensor of ``shape`` per row, each from that row's generator, stacked."""
    return torch.stack([torch.randn(*shape, generator=g) for g in generators])


class ImageParam:
    """Base: ``params`` go to the optimizer, ``pixels()`` is the image in pixel space."""

    params: list[torch.Tensor]

    def pixels(self, rows: slice | None = None) -> torch.Tensor:
        """The images of ``rows`` (default: all) in pixel space."""
        raise NotImplementedError

    def model_input(
        self, model: Model, pixels: torch.Tensor | None = None, rows: slice | None = None
    ) -> torch.Tensor:
        """The untransformed image in the model's input space (``pixels``: already computed)."""
        return model.normalize(self.pixels(rows) if pixels is None else pixels)


class PixelImage(ImageParam):
    """The model input itself (normalized space): the study's parameterization."""

    def __init__(self, x: torch.Tensor, model: Model) -> None:
        self.x = x.detach().clone().requires_grad_(True)
        self.params = [self.x]
        self._model = model

    @classmethod
    def normal(
        cls, model: Model, generators: Sequence[torch.Generator], size: tuple[int, int], std=1.0
    ) -> PixelImage:
        """N(0, std) noise in the model's input space (the study's random start)."""
        x = row_randn(generators, (model.card.channels, *size)) * std
        return cls(x.to(model.device), model)

    @classmethod
    def from_pixels(cls, model: Model, pixels: torch.Tensor) -> PixelImage:
        """Start from pixel-space images (a class mean, a photo)."""
        return cls(model.normalize(pixels.to(model.device)), model)

    def pixels(self, rows: slice | None = None) -> torch.Tensor:
        return self._model.denormalize(self.x if rows is None else self.x[rows])

    def model_input(
        self, model: Model, pixels: torch.Tensor | None = None, rows: slice | None = None
    ) -> torch.Tensor:
        return self.x if rows is None else self.x[rows]


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of each rfft2 coefficient (Lucid's)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + (2 if w % 2 else 1)]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage(ImageParam):
    """A 1/f^decay scaled spectrum -> irfft2 -> (decorrelated colour) -> sigmoid."""

    def __init__(
        self,
        spectrum: torch.Tensor,
        size: tuple[int, int],
        decorrelate: bool = True,
        decay_power: float = 1.0,
    ) -> None:
        h, w = size
        self.size = (h, w)
        self.decorrelate = decorrelate
        freqs = rfft2d_freqs(h, w)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
        self.scale = torch.tensor(scale, dtype=torch.float32, device=spectrum.device)[
            None, None, :, :, None
        ]
        self.spectrum = spectrum.detach().clone().requires_grad_(True)
        self.params = [self.spectrum]
        self._color = COLOR_CORRELATION.to(spectrum.device)
        self._freqs = torch.tensor(freqs / freqs.max(), dtype=torch.float32)[None, None, :, :, None]
        self.band = 1.0  # highest frequency kept, as a fraction of the highest there is
        self.resolution = 1.0  # the side drawn, as a fraction of ``size`` (coarse steps)

    def _scaled(self, raw: torch.Tensor) -> torch.Tensor:
        """The spectrum times its 1/f scale, frequencies above ``band`` zeroed."""
        scaled = self.scale * raw
        if self.band < 1:
            scaled = scaled * (self._freqs.to(raw.device) <= self.band)
        return scaled

    @staticmethod
    def spectrum_shape(channels: int, size: tuple[int, int]) -> tuple[int, ...]:
        h, w = size
        return (channels, *rfft2d_freqs(h, w).shape, 2)

    @classmethod
    def normal(
        cls,
        model: Model,
        generators: Sequence[torch.Generator],
        size: tuple[int, int],
        std: float = 0.01,
        decorrelate: bool = True,
        decay_power: float = 1.0,
    ) -> FourierImage:
        """A random start, one row per generator: Lucid's N(0, std) spectrum (a nearly grey
        image); :class:`PhaseImage` draws phases instead (:meth:`_random_start`)."""
        start = cls._random_start(generators, model.card.channels, size, std)
        return cls(start.to(model.device), size, decorrelate, decay_power)

    @classmethod
    def _random_start(
        cls, generators: Sequence[torch.Generator], channels: int, size: tuple[int, int], std: float
    ) -> torch.Tensor:
        return row_randn(generators, cls.spectrum_shape(channels, size)) * std

    @classmethod
    def from_pixels(
        cls,
        pixels: torch.Tensor,
        decorrelate: bool = True,
        decay_power: float = 1.0,
        eps: float = 1e-3,
    ) -> FourierImage:
        """The parameter whose image is ``pixels`` (clipped into the sigmoid's open range)."""
        size = (pixels.shape[2], pixels.shape[3])
        shape = FourierImage.spectrum_shape(pixels.shape[1], size)
        probe = FourierImage(torch.zeros(1, *shape), size, decorrelate, decay_power)
        t = torch.logit(pixels.float().clamp(eps, 1 - eps))
        if decorrelate and pixels.shape[1] == 3:
            t = torch.einsum("nchw,dc->ndhw", t, torch.linalg.inv(probe._color))
        spectrum = torch.fft.rfftn(t * 4.0, dim=(2, 3), norm="ortho")
        spectrum = torch.view_as_real(spectrum) / probe.scale
        return cls._from_spectrum(spectrum.to(pixels.device), size, decorrelate, decay_power)

    @classmethod
    def _from_spectrum(
        cls, spectrum: torch.Tensor, size: tuple[int, int], decorrelate: bool, decay_power: float
    ) -> FourierImage:
        return cls(spectrum, size, decorrelate, decay_power)

    def drawn_size(self) -> tuple[int, int]:
        """The side of the images :meth:`pixels` draws now: ``size`` times ``resolution``
        (even, at least :data:`MIN_COARSE_SIDE`; never more than ``size``)."""
        h, w = self.size
        if self.resolution >= 1:
            return h, w
        side = [max(MIN_COARSE_SIDE, 2 * round(n * self.resolution / 2)) for n in (h, w)]
        return (h, w) if side[0] >= h or side[1] >= w else (side[0], side[1])

    def _irfft(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The image of a (complex) spectrum at :meth:`drawn_size`: at a coarse size only the
        frequencies that size holds are drawn, as a band-limited sampling of the full image
        (the same amplitudes), which is what makes the coarse steps cheap."""
        (h, w), (lh, lw) = self.size, self.drawn_size()
        if (lh, lw) == (h, w):
            return torch.fft.irfftn(spectrum, s=(h, w), dim=(2, 3), norm="ortho")
        rows = torch.cat([spectrum[:, :, : lh // 2], spectrum[:, :, h - lh // 2 :]], dim=2)
        low = torch.fft.irfftn(rows[..., : lw // 2 + 1], s=(lh, lw), dim=(2, 3), norm="ortho")
        return low * math.sqrt(lh * lw / (h * w))

    def pixels(self, rows: slice | None = None) -> torch.Tensor:
        raw = self.spectrum if rows is None else self.spectrum[rows]
        spectrum = torch.view_as_complex(self._scaled(raw).contiguous())
        return self._colour_and_squash(self._irfft(spectrum) / 4.0)

    def _colour_and_squash(self, t: torch.Tensor) -> torch.Tensor:
        """Decorrelated channels to RGB (3-channel images), then the sigmoid into [0, 1]."""
        if self.decorrelate and t.shape[1] == 3:
            t = torch.einsum("nchw,dc->ndhw", t, self._color)
        return torch.sigmoid(t)


class PhaseImage(FourierImage):
    """MACO-style: a fixed 1/f^decay magnitude spectrum, only the phase is optimized.

    The image (each row) is standardized to zero mean and unit standard deviation before
    the colour decorrelation and sigmoid, so its contrast is fixed as well: the optimizer can
    only move structure around, not raise the amplitude.
    """

    def __init__(
        self,
        phase: torch.Tensor,
        size: tuple[int, int],
        decorrelate: bool = True,
        decay_power: float = 1.0,
    ) -> None:
        super().__init__(torch.zeros(1, 1, 1, 1, 2), size, decorrelate, decay_power)
        self.phase = phase.detach().clone().requires_grad_(True)
        self.params = [self.phase]
        del self.spectrum

    @classmethod
    def _random_start(
        cls, generators: Sequence[torch.Generator], channels: int, size: tuple[int, int], std: float
    ) -> torch.Tensor:
        """Uniformly random phases (``std`` is unused: the magnitude is fixed)."""
        shape = cls.spectrum_shape(channels, size)[:-1]
        return torch.stack([(torch.rand(*shape, generator=g) * 2 - 1) * np.pi for g in generators])

    @classmethod
    def _from_spectrum(
        cls, spectrum: torch.Tensor, size: tuple[int, int], decorrelate: bool, decay_power: float
    ) -> PhaseImage:
        """The phases of the spectrum (its magnitudes are replaced by the fixed profile)."""
        return cls(torch.view_as_complex(spectrum).angle(), size, decorrelate, decay_power)

    def pixels(self, rows: slice | None = None) -> torch.Tensor:
        phase = self.phase if rows is None else self.phase[rows]
        t = self._irfft(torch.polar(self.scale[..., 0].expand_as(phase), phase))
        flat = t.flatten(1)
        t = (t - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-6)
        return self._colour_and_squash(t)
