"""Noise averaging: a method's maps for noisy copies of each image, combined.

:class:`NoiseTunnel` wraps any method (as captum's NoiseTunnel does); a variant only says which
moments of the noisy maps it needs and how it combines them. SmoothGrad, VarGrad and
SmoothGrad-squared are noise tunnels over :class:`~convsight.attribution.gradient.Saliency`:
the mean, the variance and the mean square of the noisy gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch

from convsight.attribution.base import Method
from convsight.attribution.gradient import Saliency, sum_rows
from convsight.attribution.options import Option, options_of
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import Targets, repeated


def tunnel_options(noise: Sequence[Option], wrapped: Sequence[Option]) -> tuple[Option, ...]:
    """The ``noise`` options, then those of the ``wrapped`` method not named like one."""
    names = {option.name for option in noise}
    return tuple(noise) + tuple(o for o in wrapped if o.name not in names)


def noisy_copies(
    inputs: torch.Tensor,
    samples: int,
    noise_level: float,
    stdev: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``samples`` noisy copies of each image, image by image (N * samples rows).

    The noise is drawn in one call (N * samples x C x H x W standard normals), as captum's
    NoiseTunnel does: the same seed gives the same noise.
    """
    n = inputs.shape[0]
    if stdev is None:
        spread = inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1)
        sigma = (noise_level * spread).view(n, 1, 1, 1, 1)
    else:
        sigma = torch.full((n, 1, 1, 1, 1), float(stdev), device=inputs.device)
    shape = (n * samples, *inputs.shape[1:])
    noise = torch.randn(shape, generator=generator, device=inputs.device)
    noisy = inputs.unsqueeze(1) + noise.view(n, samples, *inputs.shape[1:]) * sigma
    return noisy.flatten(0, 1)


class NoiseTunnel(Method):
    """A method's maps for noisy copies of each image, averaged (captum's NoiseTunnel).

    ``NoiseTunnel(GuidedBackprop(model))`` smooths Guided Backprop; given a model, a tunnel
    wraps its class's ``wrapped`` method (Saliency). ``noise_level`` is the noise's standard
    deviation as a fraction of each image's value range (SmoothGrad's 10-20%); ``stdev`` gives
    it in pixels. Noise is drawn from torch's generator (seed it for the same maps) or
    ``generator``; ``batch_size`` noisy images go through the wrapped method at a time. The
    wrapped method's own options are options of the tunnel too (those not named like a noise
    option, which are the keyword-only parameters of :meth:`_attribute`). A variant sets
    ``moments`` (which powers of the noisy maps it averages) and :meth:`combine`.
    """

    title = "Noise tunnel"
    reduce = Saliency.reduce
    wrapped: ClassVar[type[Method]] = Saliency
    moments: ClassVar[tuple[int, ...]] = (1,)

    def __init__(self, model: Model | Method) -> None:
        method = model if isinstance(model, Method) else self.wrapped(model)
        super().__init__(method.model)
        self.method = method
        self._options: tuple[Option, ...] | None = None  # None: the class's
        if isinstance(model, Method):
            self._options = tunnel_options(options_of(type(self)._attribute), method.options)

    @classmethod
    def declare_options(cls) -> tuple[Option, ...]:
        """The noise options, then those of the class's ``wrapped`` method."""
        return tunnel_options(options_of(cls._attribute), cls.wrapped.options)

    def instance_options(self) -> tuple[Option, ...]:
        """The noise options, then those of the method this tunnel wraps."""
        return type(self).options if self._options is None else self._options

    def combine(self, means: list[torch.Tensor]) -> torch.Tensor:
        """The map from the means of the noisy maps raised to each of ``moments``."""
        return means[0]

    def to_heatmap(self, attributions: torch.Tensor) -> torch.Tensor:
        return self.method.to_heatmap(attributions)

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        samples: Annotated[int, "noisy copies per image"] = 16,
        noise_level: Annotated[
            float, "the noise's standard deviation as a fraction of each image's value range"
        ] = 0.15,
        stdev: Annotated[
            float | None, "the noise's standard deviation in pixels (overrides)"
        ] = None,
        batch_size: Annotated[int, "noisy images per forward pass"] = 64,
        generator: Annotated[
            torch.Generator | None,
            "where the noise is drawn from (default: torch's global generator: seed it)",
        ] = None,
        **wrapped_options: Any,
    ) -> torch.Tensor:
        if samples < 1:
            raise ConvsightError(f"{self.title} needs at least one sample")
        noisy = noisy_copies(inputs, samples, noise_level, stdev, generator)
        rows = repeated(targets, inputs.shape[0], samples)
        own = self.method.resolve(wrapped_options)  # with its defaults of shadowed options
        self.method.last_run = {}

        def powers(part: slice, image: torch.Tensor, sample: torch.Tensor) -> list[torch.Tensor]:
            maps = self.method._attribute(noisy[part], rows[part], **own)
            return [maps if k == 1 else maps.pow(k) for k in self.moments]

        sums = sum_rows(inputs.shape[0], samples, batch_size, powers, inputs.device)
        for key, value in self.method.last_run.items():  # what the wrapped method adds
            self.last_run.setdefault(key, value)
        return self.combine([total / samples for total in sums])


class SmoothGrad(NoiseTunnel):
    """SmoothGrad: saliency averaged over noisy copies (Smilkov et al. 2017).

    https://arxiv.org/abs/1706.03825 — the noise tunnel over Saliency that takes the mean;
    ``absolute`` (Saliency's option) averages the gradients' absolute values.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    paper = "https://arxiv.org/abs/1706.03825"


class VarGrad(NoiseTunnel):
    """VarGrad: the variance of the gradients of noisy copies (Adebayo et al. 2018).

    https://arxiv.org/abs/1810.03307 — the noise tunnel over Saliency that takes the
    variance, E[g²] - E[g]² as in captum's NoiseTunnel("vargrad"); by default of the signed
    gradients (``absolute=True``: of their absolute values).
    """

    name = "vargrad"
    title = "VarGrad"
    paper = "https://arxiv.org/abs/1810.03307"
    moments = (1, 2)
    option_defaults = {"absolute": False}

    def combine(self, means: list[torch.Tensor]) -> torch.Tensor:
        mean, mean_square = means
        return mean_square - mean * mean


class SmoothGradSquared(NoiseTunnel):
    """SmoothGrad-squared: noisy copies' squared gradients, averaged (Hooker et al. 2019).

    https://arxiv.org/abs/1806.10758 — the noise tunnel over Saliency that averages the squares
    (captum's NoiseTunnel("smoothgrad_sq")); ``absolute`` makes no difference here.
    """

    name = "smoothgrad-sq"
    title = "SmoothGrad-Squared"
    paper = "https://arxiv.org/abs/1806.10758"
    moments = (2,)
