"""Render-time hooks on the model itself: a perturbed network each step (ghost noise), a
prior on the statistics the network sees (batch norm inputs), and a damped gradient through
residual branches (skip gradient).

Each registers on construction only when switched on, acts only while the render says so
(``rng`` set / ``active`` / a gradient is being recorded), and is removed by ``close()``,
which the render calls in its ``finally``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

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


def residual_branches(module: nn.Module) -> list[nn.Module]:
    """The residual branch (the part added to the skip connection) of every residual block
    torchvision builds: MobileNet v2/v3 and EfficientNet blocks that use their skip
    connection (``conv`` / ``block``), ResNet's BasicBlock (from ``bn2``) and Bottleneck
    (``bn3``), ConvNeXt's CNBlock (``block``). Hooking the branch's last module scales the
    gradient of the whole branch. Empty for a model without such blocks."""
    found: list[nn.Module] = []
    for m in module.modules():
        branch = None
        if isinstance(m, BasicBlock):
            branch = m.bn2
        elif isinstance(m, Bottleneck):
            branch = m.bn3
        elif isinstance(m, CNBlock):
            branch = m.block
        elif getattr(m, "use_res_connect", False) is True:
            branch = next((getattr(m, a) for a in ("conv", "block") if hasattr(m, a)), None)
        if isinstance(branch, nn.Module):
            found.append(branch)
    return found


def check_model_hooks(
    module: nn.Module, ghost: float = 0.0, bn_prior: float = 0.0, skip_gradient: float = 1.0
) -> None:
    """Fail now (one sentence) if the model lacks the layers a switched-on hook needs."""
    if ghost > 0:
        _conv_layers(module)
    if bn_prior > 0:
        _batch_norms(module)
    if skip_gradient < 1 and not residual_branches(module):
        raise ConvsightError(
            "skip-gradient needs residual blocks (torchvision ResNet, MobileNet v2/v3, "
            "EfficientNet or ConvNeXt); the model has none"
        )


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


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a copy, so later in-place ops are safe); gradient times ``gamma``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:  # type: ignore[override]
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.gamma, None


class SkipGradient:
    """Multiply the gradient through every residual branch by ``gamma`` (values unchanged).

    The skip gradient method (Wu et al. 2020, "Skip connections matter: on the
    transferability of adversarial examples generated with ResNets",
    https://arxiv.org/abs/2002.05990): the image follows more of the gradient that reaches
    it along skip connections, i.e. through fewer nonlinear layers, and less of the
    gradient specific to this network's deep branches. The objective and the network's
    outputs are unchanged; only the ascent direction is. Acts whenever a gradient is
    recorded; on a model without residual blocks it does nothing (``describe`` says so).
    """

    def __init__(self, module: nn.Module, gamma: float) -> None:
        self.gamma = gamma
        self.handles = []
        if gamma < 1:
            self.handles = [b.register_forward_hook(self._hook) for b in residual_branches(module)]
        self.branches = len(self.handles)

    def describe(self) -> str:
        if self.gamma >= 1:
            return ""
        if not self.branches:
            return f"skip gradient {self.gamma:g} off: no residual blocks"
        return f"skip gradient {self.gamma:g} on {self.branches} residual branches"

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None
        return _ScaleGradient.apply(out, self.gamma)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
