"""What a model computes in its own code, outside every module LRP has a rule for.

LRP's rules sit on modules; an operation a model's ``forward`` does in code passes relevance as
its plain gradient. For elementwise activations, flattening and concatenation that is right; for
pooling it is not (average pooling in code spreads a channel's relevance evenly over space,
whatever fired where). :func:`find_code_ops` runs one forward pass with a
:class:`~torch.overrides.TorchFunctionMode` and module hooks, and records the pooling and spatial
reductions done in code (refused by LRP; max pooling is not among them, see :data:`POOLS`) and
the sums of two tensors done in code (residual
additions: allowed, counted).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# Average (and Lp) pooling gets zennit's Norm rule as a module; in code, its gradient spreads
# relevance evenly. Max pooling has no rule in zennit's composites even as a module (relevance
# goes to the maximum, as its gradient does), so in code it passes exactly as a module would.
POOLS = frozenset(f"{kind}_pool{d}d" for kind in ("avg", "adaptive_avg", "lp") for d in (1, 2, 3))
REDUCTIONS = frozenset(("mean", "sum", "nanmean", "nansum", "logsumexp", "std", "var"))
SUMS = frozenset(("add", "add_", "__add__", "__iadd__", "__radd__"))
_SKIP = (str(Path(torch.__file__).parent) + os.sep, __file__)


@dataclass(frozen=True)
class CodeOps:
    """One forward pass's operations outside rules: ``pools`` as (operation, where) pairs,
    ``sums`` the number of sums of two tensors."""

    pools: tuple[tuple[str, str], ...] = ()
    sums: int = 0


def _reduced_dims(args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
    """The dims a reduction call takes (all of them for none given); None where they are not
    plain ints (a tensor, names)."""
    value = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None:
        return list(range(value.dim()))
    if isinstance(dim, int):
        return [dim % value.dim()]
    if isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim):
        return [d % value.dim() for d in dim]
    return None


def _is_spatial_reduction(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    if name not in REDUCTIONS or not args or not isinstance(args[0], torch.Tensor):
        return False
    if args[0].dim() < 3:
        return False
    dims = _reduced_dims(args, kwargs)
    return dims is not None and any(d >= 2 for d in dims)


def _is_sum(name: str, args: Sequence[Any]) -> bool:
    if name not in SUMS or len(args) < 2:
        return False
    a, b = args[0], args[1]
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def _caller() -> str:
    """The function (qualified name) of the nearest frame outside torch and this module."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back
    if frame is None:
        return "the model's code"
    return getattr(frame.f_code, "co_qualname", frame.f_code.co_name)


class _Watch(TorchFunctionMode):
    """Records pooling, spatial reductions and sums called while no leaf module runs."""

    def __init__(self) -> None:
        super().__init__()
        self.leaves = 0  # leaf modules running now: their rule covers what they call
        self.pools: list[tuple[str, str]] = []
        self.sums = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.leaves:
            name = getattr(func, "__name__", "")
            if name in POOLS or _is_spatial_reduction(name, args, kwargs):
                self.pools.append((name, _caller()))
            elif _is_sum(name, args):
                self.sums += 1
        return func(*args, **kwargs)


def find_code_ops(module: nn.Module, x: torch.Tensor) -> CodeOps:
    """The pooling / spatial reductions and the sums ``module`` does in its own code (outside
    its leaf modules) in one forward pass on ``x``; every hook is taken off on return."""
    watch = _Watch()

    def enter(_module: nn.Module, _inputs: Any) -> None:
        watch.leaves += 1

    def leave(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        watch.leaves -= 1

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_pre_hook(enter) for m in leaves]
    handles += [m.register_forward_hook(leave) for m in leaves]
    try:
        with torch.no_grad(), watch:
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return CodeOps(tuple(dict.fromkeys(watch.pools)), watch.sums)
