"""Modified backpropagation: Guided Backprop and DeconvNet.

Both change only how the gradient passes a rectifier. :func:`rectifier_rule` swaps every ReLU,
ReLU6 (and any Hardtanh clipping at 0) module of a model for one that applies the rule, and
routes functional ``F.relu`` / ``F.relu6`` / ``torch.relu`` calls through it as well; in-place
rectifiers stay in place. Everything is restored when the block ends, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convsight.attribution.base import Method

RULES = ("guided", "deconvnet")


class _Rectify(torch.autograd.Function):
    """clamp(x, low, high) forward; the backward rule is 'guided' or 'deconvnet'."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, low: float, high: float | None, rule: str, inplace: bool
    ):
        if inplace:
            ctx.mark_dirty(x)
            out = x.clamp_(min=low, max=high)
        else:
            out = x.clamp(min=low, max=high)
        ctx.rule = rule
        if rule == "guided":
            passed = out > low
            if high is not None:
                passed &= out < high
            ctx.save_for_backward(passed)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        if ctx.rule == "guided":
            (passed,) = ctx.saved_tensors
            grad = grad.clamp(min=0) * passed
        else:
            grad = grad.clamp(min=0)
        return grad, None, None, None, None


class RuleRectifier(nn.Module):
    """Stands in for a ReLU / ReLU6 module while a rule is active."""

    def __init__(self, original: nn.Module, rule: str, low: float, high: float | None) -> None:
        super().__init__()
        self.original = original
        self.rule, self.low, self.high = rule, low, high
        self.inplace = bool(getattr(original, "inplace", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Rectify.apply(x, self.low, self.high, self.rule, self.inplace)


def _limits(module: nn.Module) -> tuple[float, float | None] | None:
    if isinstance(module, nn.ReLU):
        return 0.0, None
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:  # ReLU6 and friends
        return 0.0, float(module.max_val)
    return None


@contextmanager
def rectifier_rule(module: nn.Module, rule: str) -> Iterator[int]:
    """Apply ``rule`` to every rectifier of ``module`` inside the block; yield how many.

    Modules are swapped in their parents and functional calls patched; both are put back on
    exit, also when the block raises.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}")
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    patched: list[tuple[Any, str, Any]] = []

    def functional(low: float, high: float | None):
        def apply(x: torch.Tensor, *args: Any, inplace: bool = False, **kwargs: Any):
            inplace = bool(args[0]) if args else inplace
            return _Rectify.apply(x, low, high, rule, inplace)

        return apply

    try:
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                limits = _limits(child)
                if limits is not None:
                    setattr(parent, child_name, RuleRectifier(child, rule, *limits))
                    swapped.append((parent, child_name, child))
        for owner, attr, low, high in (
            (F, "relu", 0.0, None),
            (F, "relu6", 0.0, 6.0),
            (torch, "relu", 0.0, None),
        ):
            patched.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, functional(low, high))
        yield len(swapped)
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)
        for parent, child_name, child in reversed(swapped):
            setattr(parent, child_name, child)


class _RuleBackprop(Method):
    rule = ""
    reduce = "max_abs"

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with rectifier_rule(self.model.module, self.rule):
            return self.input_gradient(inputs, targets)


class GuidedBackprop(_RuleBackprop):
    """Guided Backpropagation (Springenberg et al. 2015), https://arxiv.org/abs/1412.6806.

    A rectifier passes gradient only where both its input and the gradient are positive.
    Works with ReLU6 and with in-place and functional ReLUs.
    """

    name = "guided"
    title = "Guided Backprop"
    rule = "guided"


class DeconvNet(_RuleBackprop):
    """DeconvNet (Zeiler & Fergus 2014), https://arxiv.org/abs/1311.2901.

    A rectifier passes only the positive part of the gradient, whatever its forward input.
    """

    name = "deconvnet"
    title = "DeconvNet"
    rule = "deconvnet"
