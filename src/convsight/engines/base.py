"""Engine names, defined once, and what every engine shares: batching, the target score of
each row, failure phrases and the derived copies of a network kept on its Model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, TypeVar, get_args

import torch
from torch import nn

from convsight.models import Model
from convsight.targets import Target

Engine = Literal["incremental", "frozen", "eager"]
"""How forward passes run: incremental inference (occluded images only: re-run only what a
window changes), a traced and frozen copy of the network, or the module itself."""
ForwardEngine = Literal["eager", "frozen"]
"""The engines that run any batch of pixels through the whole network."""
Auto = Literal["auto"]
EngineChoice = Literal[Auto, ForwardEngine]
"""An engine as a job is told it: "auto" is each method's own default engine."""

ENGINES: tuple[Engine, ...] = get_args(Engine)
FORWARD_ENGINES: tuple[ForwardEngine, ...] = get_args(ForwardEngine)
ENGINE_CHOICES: tuple[str, ...] = get_args(EngineChoice)
AUTO: Auto = "auto"
DEFAULT_ENGINE: ForwardEngine = "eager"
"""The engine of plain forward passes and of every method that names no other."""

T = TypeVar("T")


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    size = max(1, int(size))
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def select(scores: torch.Tensor, targets: torch.Tensor | Target) -> torch.Tensor:
    """The target score of each row: ``scores[i, targets[i]]`` for class indices, else what
    the :class:`~convsight.targets.Target` makes of the output."""
    if isinstance(targets, torch.Tensor):
        return scores.gather(1, targets.to(scores.device).view(-1, 1)).squeeze(1)
    return targets(scores)


def forward_batch(device: torch.device) -> int:
    """Rows per forward pass when none is given: 4 on a CPU (on MobileNet v2 at 224 px a batch
    of 4 runs 2.3x faster per image than a batch of 16 there: the activations stay in cache),
    64 on a GPU."""
    return 4 if device.type == "cpu" else 64


def failure_reason(exc: BaseException) -> str:
    """An exception as a short phrase: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _state_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``module`` is replaced or changed in place."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((id(t), t._version) for t in tensors)


def cached(model: Model, kind: str, build: Callable[[], T]) -> T:
    """``build()``'s result (a derived copy of the network: frozen, incremental, ...), kept in
    ``model.engine_cache`` under ``kind`` until a parameter or buffer of its module changes.
    The Model empties that cache when its module or card is replaced or it moves, and it goes
    with the Model."""
    key = _state_key(model.module)
    entry = model.engine_cache.get(kind)
    if entry is None or entry[0] != key:
        entry = (key, build())
        model.engine_cache[kind] = entry
    return entry[1]
