"""Render-time hooks on the model itself: a perturbed network each step (ghost noise) and a
prior on the statistics the network sees (batch norm inputs).

Both register on construction only when switched on, act only while the render says so
(``rng`` set / ``active``), and are removed by ``close()``, which the render calls in its
``finally``.
"""

from __future__ import annotations

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.optvis.transforms import RowRandom


def _conv_layers(module: nn.Module) -> list[nn.Conv2d]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConvsightError("ghost noise needs conv layers; the model has none")
    return convs


def _batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    norms = [
        m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
    ]
    if not norms:
        raise ConvsightError(
            "the batch norm prior needs batch norm layers with running statistics; "
            "the model has none"
        )
    return norms


def check_model_hooks(module: nn.Module, ghost: float, bn_prior: float) -> None:
    """Fail now (one sentence) if the model lacks the layers ghost noise or the prior need."""
    if ghost > 0:
        _conv_layers(module)
    if bn_prior > 0:
        _batch_norms(module)


class GhostNoise:
    """Multiply every channel of every conv output by 1 + N(0, std^2) while ``rng`` is set.

    A slightly different network each step (Li et al. 2020, "Learning transferable
    adversarial examples via ghost networks", https://arxiv.org/abs/1812.03413): an image
    that only one exact set of weights likes stops paying. Draws come per row from the
    rows' own generators (:class:`RowRandom`), so a row's noise ignores the other rows.
    """

    def __init__(self, module: nn.Module, std: float) -> None:
        self.std = std
        self.rng: RowRandom | None = None
        self.handles = []
        if std > 0:
            self.handles = [c.register_forward_hook(self._hook) for c in _conv_layers(module)]

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if self.rng is None or not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        noise = self.rng.normal((out.shape[1], 1, 1)).to(out.device, out.dtype)
        return out * (1 + self.std * noise)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class BatchNormPrior:
    """Per row: how far each batch norm layer's input statistics are from its running ones.

    DeepInversion's feature-distribution prior (Yin et al. 2020, "Dreaming to distill",
    https://arxiv.org/abs/1912.08795), per image instead of per batch so rows stay
    independent: the sum over batch norm layers of ||mean - running mean|| + ||var -
    running var|| (means and variances over positions, per channel). Collected by
    pre-forward hooks while ``active``; ``take`` returns it per row and resets.
    """

    def __init__(self, module: nn.Module, weight: float) -> None:
        self.active = False
        self.total: torch.Tensor | int = 0
        self.handles = []
        if weight > 0:
            self.handles = [
                norm.register_forward_pre_hook(self._hook) for norm in _batch_norms(module)
            ]

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        mean, var = x.mean((2, 3)), x.var((2, 3), unbiased=False)
        self.total = (
            self.total
            + (mean - layer.running_mean).norm(dim=1)
            + (var - layer.running_var).norm(dim=1)
        )

    def take(self, views: int) -> torch.Tensor | int:
        total, self.total = self.total, 0
        if isinstance(total, int) or views == 1:
            return total
        return total.reshape(views, -1).mean(0)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
