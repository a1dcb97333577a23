"""The base of objectives: :class:`Context` (what one step computed), :class:`Objective` (a
score per batch row with algebra and a description) and :func:`objective`, the decorator that
turns a function of the context into an objective maker. The objectives themselves are in
:mod:`convsight.optvis.objectives`, each written as a new one is::

    @objective(layer="layer", index="channels")
    def peak(ctx: Context, layer: str, channels: Rows) -> torch.Tensor:
        act = ctx.acts[layer].flatten(2).amax(2)  # N x C
        return act.gather(1, ctx.pick(channels, "channels")[:, None])[:, 0]

    peak("features.28", [3, 7]) - 0.1 * l1()  # described "peak(features.28, [3, 7]) - 0.1*L1"
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec

import torch

from convsight.errors import ConvsightError

#: Pseudo layer name of the model's final output (class scores before softmax).
OUTPUT = "<output>"

Rows = int | Sequence[int]
#: A check of an objective against the layer shapes (channels first) and the batch size.
Check = Callable[[dict[str, tuple[int, ...]], int], None]
P = ParamSpec("P")


@dataclass
class Context:
    """One forward pass of a render step.

    ``acts`` holds the outputs of the layers the objective needs (``OUTPUT`` for the model
    output); ``image`` is the untransformed pixel-space image (N x C x H x W, [0, 1] for
    sigmoid parameterizations), ``input`` the same image in the model's input space.
    ``views`` is how many transformed views of each image the batch holds (rows are
    ``view * N + row``); layer values are averaged over views.
    """

    acts: dict[str, torch.Tensor]
    image: torch.Tensor
    input: torch.Tensor
    views: int = 1
    rows: torch.Tensor | None = None  # which rows of the whole batch these are (None: all)
    sliced: frozenset[str] = frozenset()  # layers whose acts hold only each row's own channel

    def pick(self, value: Rows, what: str) -> torch.Tensor:
        """Per-row indices (a channel, a class) for the rows of this context."""
        if isinstance(value, int):
            return torch.full((self.batch,), value, dtype=torch.long)
        values = torch.as_tensor(list(value), dtype=torch.long)
        return values if self.rows is None else values[self.rows]

    def own_channel(self, layer: str, values: torch.Tensor, channels: Rows) -> torch.Tensor:
        """Each row's own channel of ``values`` (N x C x ..., computed from ``acts[layer]``):
        channel ``channels[row]``, or the one channel a sliced forward computed for the row."""
        if layer in self.sliced:
            return values[:, 0]
        index = self.pick(channels, "channels").to(values.device)
        return values.gather(1, index[:, None])[:, 0]

    @property
    def batch(self) -> int:
        return self.image.shape[0]


class Objective:
    """A per-row objective; combine with ``+``, ``-`` and scalar ``*``."""

    def __init__(
        self,
        fn: Callable[[Context], torch.Tensor],
        description: str,
        layers: Sequence[str] = (),
        penalty: bool = False,
        checks: Sequence[Check] = (),
        coupled: bool = False,
    ) -> None:
        self._fn = fn
        self.description = description
        self.layers = tuple(dict.fromkeys(layers))
        self.penalty = penalty
        self._checks = tuple(checks)
        self.coupled = coupled  # a row's value depends on other rows: render in one chunk
        self.channel_of: tuple[str, Rows] | None = None  # (layer, channels) of channel/neuron
        self._terms: list[tuple[float, Objective]] | None = None

    # --- evaluation -------------------------------------------------------------------------
    def __call__(self, ctx: Context) -> torch.Tensor:
        if self._terms is None:
            return self._fn(ctx)
        return sum(weight * term(ctx) for weight, term in self._terms)  # type: ignore[return-value]

    def terms(self) -> list[tuple[float, Objective]]:
        """The weighted leaves of this objective (a leaf is its own single term)."""
        return list(self._terms) if self._terms is not None else [(1.0, self)]

    def check(self, shapes: dict[str, tuple[int, ...]], batch: int) -> None:
        """Raise ConvsightError if a channel/class/row count does not fit the layer shapes."""
        for _, term in self.terms():
            for check in term._checks:
                check(shapes, batch)

    # --- algebra ----------------------------------------------------------------------------
    @staticmethod
    def _combine(terms: list[tuple[float, Objective]]) -> Objective:
        merged: list[tuple[float, Objective]] = []
        for weight, term in terms:
            for i, (w, t) in enumerate(merged):
                if t is term:
                    merged[i] = (w + weight, t)
                    break
            else:
                merged.append((weight, term))
        parts = []
        for weight, term in merged:
            text = term.description
            if weight == 1:
                parts.append(f"+ {text}")
            elif weight == -1:
                parts.append(f"- {text}")
            elif weight < 0:
                parts.append(f"- {-weight:g}*{text}")
            else:
                parts.append(f"+ {weight:g}*{text}")
        description = " ".join(parts)
        description = description[2:] if description.startswith("+ ") else "-" + description[2:]
        result = Objective(
            lambda ctx: torch.zeros(()),
            description,
            [layer for _, t in merged for layer in t.layers],
            penalty=all(t.penalty for _, t in merged),
            coupled=any(t.coupled for _, t in merged),
        )
        result._terms = merged
        return result

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)):
            if other == 0:
                return self
            return NotImplemented
        return Objective._combine(self.terms() + other.terms())

    def __radd__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts at 0
            return self
        return NotImplemented

    def __neg__(self) -> Objective:
        return Objective._combine([(-w, t) for w, t in self.terms()])

    def __sub__(self, other: Objective) -> Objective:
        return self + (-other)

    def __mul__(self, scalar: float) -> Objective:
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        return Objective._combine([(scalar * w, t) for w, t in self.terms()])

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> Objective:
        return self * (1.0 / scalar)

    def __repr__(self) -> str:
        return f"Objective({self.description})"


# --- descriptions and checks --------------------------------------------------------------


def rows_text(value: Rows) -> str:
    """Row indices as a description shows them (the first two and the last of a long list)."""
    if isinstance(value, int):
        return str(value)
    values = list(value)
    if len(values) > 4:
        return f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)} rows)"
    return str(values) if len(values) != 1 else str(values[0])


def _check_index(layer: str, values: Rows, what: str) -> Check:
    def check(shapes: dict[str, tuple[int, ...]], batch: int) -> None:
        if not isinstance(values, int) and len(list(values)) != batch:
            raise ConvsightError(f"{len(list(values))} {what}s given for a batch of {batch} rows")
        shape = shapes.get(layer)
        if shape is None:
            return
        count = shape[0]
        where = "the model output" if layer == OUTPUT else f"layer '{layer}'"
        for v in [values] if isinstance(values, int) else list(values):
            if not 0 <= v < count:
                raise ConvsightError(
                    f"{what} {v} is out of range: {where} has {count} {what}s (0-{count - 1})"
                )

    return check


def _text(value: Any) -> str:
    """An argument as a description shows it: rows as :func:`rows_text`, names joined."""
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, (int, range, list, tuple)):
        return rows_text(value)
    return str(value)


def _describe(
    description: str | Callable[..., str] | None,
    name: str,
    parameters: list[inspect.Parameter],
    values: dict[str, Any],
) -> str:
    if callable(description):
        return description(**values)
    if description is not None:
        return description.format(**{key: _text(value) for key, value in values.items()})
    shown = []
    for p in parameters:
        value = values[p.name]
        if p.default is p.empty:
            shown.append(_text(value))
        elif not (value is p.default or (type(value) is type(p.default) and value == p.default)):
            shown.append(f"{p.name}={_text(value)}")
    return f"{name}({', '.join(shown)})"


def _layers(argument: str | None, values: dict[str, Any]) -> list[str]:
    """The layers an objective reads: none, the model output, or those an argument names."""
    if argument is None:
        return []
    if argument == OUTPUT:
        return [OUTPUT]
    named = values[argument]
    return [named] if isinstance(named, str) else list(named)


def _checks(
    layers: list[str],
    values: dict[str, Any],
    index: str | None,
    check: Callable[..., Check] | None,
) -> list[Check]:
    """The check of the ``index`` argument (channels of a layer, classes of the output) and
    the one ``check`` makes from the arguments."""
    checks = []
    if index is not None:
        what = "class" if layers[0] == OUTPUT else "channel"
        checks.append(_check_index(layers[0], values[index], what))
    if check is not None:
        checks.append(check(**values))
    return checks


# --- the decorator -------------------------------------------------------------------------


def objective(
    description: str | Callable[..., str] | None = None,
    *,
    layer: str | None = None,
    index: str | None = None,
    own_channel: bool = False,
    penalty: bool = False,
    coupled: bool = False,
    check: Callable[..., Check] | None = None,
) -> Callable[[Callable[Concatenate[Context, P], torch.Tensor]], Callable[P, Objective]]:
    """Turn ``fn(ctx, *args) -> one score per row`` into an objective maker ``fn(*args)``
    (an example in the module's docstring).

    ``description``: the text of the objective; a format string of the arguments
    (``"direction({layer})"``), a function of them, or None for ``name(arg, ..., key=value)``
    (keywords only where they differ from the default). ``layer``: the argument that names the
    layer (or layers) the score reads, or :data:`OUTPUT` for the model's output. ``index``: the
    argument that holds each row's channel (a class for :data:`OUTPUT`), checked against the
    batch and the layer before a render's first step. ``own_channel``: the score reads only
    each row's own channel of ``layer`` (:meth:`Context.own_channel`), so a render may compute
    only that channel. ``penalty``: a measure to subtract, not to maximize. ``coupled``: a row's
    score depends on the other rows. ``check``: a maker of one more check, called with the
    arguments by name.
    """

    def decorate(fn: Callable[Concatenate[Context, P], torch.Tensor]) -> Callable[P, Objective]:
        signature = inspect.signature(fn)
        parameters = list(signature.parameters.values())[1:]  # without the context

        @functools.wraps(fn)
        def make(*args: P.args, **kwargs: P.kwargs) -> Objective:
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            values = dict(list(bound.arguments.items())[1:])
            layers = _layers(layer, values)
            made = Objective(
                lambda ctx: fn(ctx, *args, **kwargs),
                _describe(description, fn.__name__, parameters, values),
                layers,
                penalty=penalty,
                checks=_checks(layers, values, index, check),
                coupled=coupled,
            )
            if own_channel and index is not None:
                made.channel_of = (layers[0], values[index])
            return made

        make.__dict__["__signature__"] = signature.replace(  # what help() shows
            parameters=parameters, return_annotation=Objective
        )
        return make

    return decorate
