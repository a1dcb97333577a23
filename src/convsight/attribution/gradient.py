"""Gradient methods: the input gradient and what is built on it."""

from __future__ import annotations

import numpy as np
import torch

from convsight.attribution.base import Method, baseline_like, chunks, select
from convsight.errors import ConvsightError


class Saliency(Method):
    """Image-specific class saliency: |d score / d pixel| (Simonyan et al. 2014).

    https://arxiv.org/abs/1312.6034 — the map shown is the maximum over colour channels.
    """

    name = "saliency"
    title = "Saliency"
    reduce = "max_abs"

    def _attribute(
        self, inputs: torch.Tensor, targets: torch.Tensor, absolute: bool = True
    ) -> torch.Tensor:
        grad = self.input_gradient(inputs, targets)
        return grad.abs() if absolute else grad


class InputXGradient(Method):
    """Input times gradient (Shrikumar et al. 2016), https://arxiv.org/abs/1605.01713."""

    name = "ixg"
    title = "Input x Gradient"

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return inputs * self.input_gradient(inputs, targets)


class SmoothGrad(Method):
    """SmoothGrad: saliency averaged over noisy copies (Smilkov et al. 2017).

    https://arxiv.org/abs/1706.03825 — ``noise_level`` is the noise's standard deviation as a
    fraction of each image's value range (the paper's 10-20%); ``stdev`` gives it absolutely.
    Noise is drawn from torch's generator (seed it for the same maps), ``batch_size`` rows of
    noisy images go through the network at a time.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    reduce = "max_abs"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        samples: int = 16,
        noise_level: float = 0.15,
        stdev: float | None = None,
        absolute: bool = True,
        batch_size: int = 64,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if samples < 1:
            raise ConvsightError("SmoothGrad needs at least one sample")
        n = inputs.shape[0]
        if stdev is None:
            spread = inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1)
            sigma = (noise_level * spread).view(n, 1, 1, 1, 1)
        else:
            sigma = torch.full((n, 1, 1, 1, 1), float(stdev), device=inputs.device)
        shape = (n * samples, *inputs.shape[1:])
        noise = torch.randn(shape, generator=generator, device=inputs.device)
        noisy = (inputs.unsqueeze(1) + noise.view(n, samples, *inputs.shape[1:]) * sigma).flatten(
            0, 1
        )
        rows = targets.repeat_interleave(samples)
        total = torch.zeros_like(inputs)
        with torch.enable_grad():
            for part in chunks(noisy.shape[0], batch_size):
                x = noisy[part].detach().requires_grad_(True)
                score = select(self.forward(x), rows[part]).sum()
                (grad,) = torch.autograd.grad(score, x)
                if absolute:
                    grad = grad.abs()
                image = torch.arange(part.start, part.stop, device=grad.device) // samples
                total.index_add_(0, image, grad)
        return total / samples


def path_weights(steps: int, rule: str) -> tuple[list[float], list[float]]:
    """Points in [0, 1] and weights of a quadrature rule for the path integral."""
    if steps < 1:
        raise ConvsightError("the path integral needs at least one step")
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return list(0.5 * (1 + x)), list(0.5 * w)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ConvsightError("the trapezoid rule needs at least two steps")
        w = [1 / (steps - 1)] * steps
        w[0] = w[-1] = w[0] / 2
        return list(np.linspace(0, 1, steps)), w
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if rule not in offsets:
        raise ConvsightError(
            f"unknown integration rule '{rule}' "
            "(gausslegendre, riemann_trapezoid, riemann_left, riemann_middle, riemann_right)"
        )
    return [(i + offsets[rule]) / steps for i in range(steps)], [1 / steps] * steps


class IntegratedGradients(Method):
    """Integrated Gradients (Sundararajan et al. 2017), https://arxiv.org/abs/1703.01365.

    The path from ``baseline`` (pixels, default black: a number, one value per channel, an
    image or one image per input) to the input is integrated with
    ``steps`` points of ``rule``; ``batch_size`` bounds how many path points (over all images)
    go through the network at once, so memory does not grow with ``steps``.
    """

    name = "ig"
    title = "Integrated Gradients"

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        steps: int = 50,
        baseline: float | torch.Tensor = 0.0,
        rule: str = "gausslegendre",
        batch_size: int = 32,
    ) -> torch.Tensor:
        alphas, weights = path_weights(steps, rule)
        alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
        weight = torch.tensor(weights, dtype=inputs.dtype, device=inputs.device)
        base = baseline_like(baseline, inputs)
        delta = inputs - base
        n = inputs.shape[0]
        total = torch.zeros_like(inputs)
        with torch.enable_grad():
            for part in chunks(n * steps, batch_size):
                rows = torch.arange(part.start, part.stop, device=inputs.device)
                image, step = rows // steps, rows % steps
                x = base[image] + alpha[step].view(-1, 1, 1, 1) * delta[image]
                x.requires_grad_(True)
                score = select(self.forward(x), targets[image.cpu()]).sum()
                (grad,) = torch.autograd.grad(score, x)
                total.index_add_(0, image, grad * weight[step].view(-1, 1, 1, 1))
        return delta * total
