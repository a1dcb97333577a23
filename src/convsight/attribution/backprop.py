"""Modified backpropagation: Guided Backprop and DeconvNet.

Both change only how the gradient passes a rectifier. :func:`rectifier_rule` applies the rule
to every rectifier the network runs inside the block, whatever its form: ``nn.ReLU`` /
``nn.ReLU6`` / ``nn.Hardtanh(0, x)`` / ``nn.Threshold(0, 0)`` modules and the functional
``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``, ``F.hardtanh`` calls, in place or not.
It does so with a :class:`~torch.overrides.TorchFunctionMode`: scoped to the block and to the
calling thread, so no module is changed and another thread using the same network is not
affected. A rectifier the mode cannot reach (inside TorchScript, a raw ``aten`` call) is
counted, so the method can refuse instead of returning a wrong map.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from convsight.attribution.base import Method
from convsight.errors import ConvsightError
from convsight.targets import Targets

RectifierRule = Literal["guided", "deconvnet"]
"""How the gradient passes a rectifier."""
RULES: tuple[str, ...] = get_args(RectifierRule)


class _Rectify(torch.autograd.Function):
    """clamp(x, low, high) forward; the backward rule is 'guided' or 'deconvnet'."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        low: float,
        high: float | None,
        rule: RectifierRule,
        inplace: bool,
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


_RELU = (F.relu, torch.relu, torch.Tensor.relu)
_RELU_INPLACE = (torch.relu_, torch.Tensor.relu_)


def _as_rectifier(
    func: Any, args: tuple, kwargs: dict
) -> tuple[torch.Tensor, float, float | None, bool] | None:
    """(input, low, high, in place) when ``func(*args, **kwargs)`` is a rectifier, else None."""

    def arg(index: int, name: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(name, default)

    x = arg(0, "input")
    if not isinstance(x, torch.Tensor):
        return None
    if func in _RELU:
        return x, 0.0, None, bool(arg(1, "inplace", False))
    if func in _RELU_INPLACE:
        return x, 0.0, None, True
    if func is F.relu6:
        return x, 0.0, 6.0, bool(arg(1, "inplace", False))
    if func is F.hardtanh or func is F.hardtanh_:
        low, high = float(arg(1, "min_val", -1.0)), float(arg(2, "max_val", 1.0))
        inplace = func is F.hardtanh_ or bool(arg(3, "inplace", False))
        return (x, 0.0, high, inplace) if low == 0 else None
    if func is F.threshold and float(arg(1, "threshold")) == 0 and float(arg(2, "value")) == 0:
        return x, 0.0, None, bool(arg(3, "inplace", False))
    return None


@dataclass
class RuleCounts:
    """What :func:`rectifier_rule` saw: rectifier calls it applied the rule to, and
    rectifier operations it could not reach (they ran with their plain gradient)."""

    applied: int = 0
    unreached: int = 0


class _ApplyRule(TorchFunctionMode):
    """Routes every rectifier call through :class:`_Rectify` with the rule."""

    def __init__(self, rule: RectifierRule, counts: RuleCounts) -> None:
        super().__init__()
        self.rule, self.counts = rule, counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = _as_rectifier(func, args, kwargs)
        if found is None:
            return func(*args, **kwargs)
        self.counts.applied += 1
        x, low, high, inplace = found
        return _Rectify.apply(x, low, high, self.rule, inplace)


_ATEN = torch.ops.aten


class _FindUnreached(TorchDispatchMode):
    """Counts rectifier operations that reach the dispatcher: any the rule did not replace
    (it replaces them with clamps)."""

    def __init__(self, counts: RuleCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket

        def arg(index: int, name: str, default: Any = None) -> Any:
            return args[index] if len(args) > index else kwargs.get(name, default)

        if (
            packet in (_ATEN.relu, _ATEN.relu_, _ATEN.relu6)
            or (packet in (_ATEN.hardtanh, _ATEN.hardtanh_) and arg(1, "min_val", -1.0) == 0)
            or (
                packet in (_ATEN.threshold, _ATEN.threshold_)
                and arg(1, "threshold") == 0
                and arg(2, "value") == 0
            )
        ):
            self.counts.unreached += 1
        return func(*args, **kwargs)


@contextmanager
def rectifier_rule(module: nn.Module, rule: RectifierRule) -> Iterator[RuleCounts]:
    """Apply ``rule`` to every rectifier that runs inside the block, in this thread.

    Yields a :class:`RuleCounts`, filled as forward passes run: how many rectifier calls the
    rule was applied to and how many rectifier operations it could not reach. The rule acts
    on calls, so ``module`` is neither changed nor hooked; the modes are popped on exit, also
    when the block raises.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}")
    del module  # kept in the signature: the rule is for one network's forward passes
    counts = RuleCounts()
    with _FindUnreached(counts), _ApplyRule(rule, counts):
        yield counts


class _RuleBackprop(Method):
    rule: ClassVar[RectifierRule]
    reduce = "max_abs"

    def _attribute(self, inputs: torch.Tensor, targets: Targets) -> torch.Tensor:
        with rectifier_rule(self.model.module, self.rule) as counts:
            gradient = self.input_gradient(inputs, targets)
        name = self.model.card.name
        if counts.unreached:
            raise ConvsightError(
                f"{self.title} cannot reach {counts.unreached} rectifier(s) of model '{name}' "
                "(run inside TorchScript or as raw aten calls), so its map would be wrong"
            )
        if not counts.applied:
            raise ConvsightError(
                f"{self.title} changes how the gradient passes ReLUs, and model '{name}' runs "
                "none, so its map would be the plain gradient; use saliency instead"
            )
        self.last_run["rectifier_calls"] = counts.applied
        return gradient


class GuidedBackprop(_RuleBackprop):
    """Guided Backpropagation (Springenberg et al. 2015), https://arxiv.org/abs/1412.6806.

    A rectifier passes gradient only where both its input and the gradient are positive.
    Works with ReLU6 and with in-place, functional and method (``x.relu()``) ReLUs; other
    activations (SiLU, GELU) pass their plain gradient, as in captum. A network that runs no
    ReLU is refused.
    """

    name = "guided"
    title = "Guided Backprop"
    paper = "https://arxiv.org/abs/1412.6806"
    rule = "guided"


class DeconvNet(_RuleBackprop):
    """DeconvNet (Zeiler & Fergus 2014), https://arxiv.org/abs/1311.2901.

    A rectifier passes only the positive part of the gradient, whatever its forward input.
    """

    name = "deconvnet"
    title = "DeconvNet"
    paper = "https://arxiv.org/abs/1311.2901"
    rule = "deconvnet"
