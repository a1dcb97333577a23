"""What is maximized: objectives with algebra (``+``, ``-``, scalar ``*``) and descriptions.

An objective maps a :class:`Context` (the layer outputs, the model output, the image of one
optimization step) to one value per batch row, so N rows optimize N objectives at once:
``channel("features.28", [0, 1, 2])`` gives row i the mean of channel ``[0, 1, 2][i]``.
Penalties (``l1``, ``total_variation``, ...) are positive measures; subtract them:
``channel("features.28", 7) - 0.1 * l1()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convsight.errors import ConvsightError

#: Pseudo layer name of the model's final output (class scores before softmax).
OUTPUT = "<output>"

Rows = int | Sequence[int]


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
        checks: Sequence[Callable[[dict[str, tuple[int, ...]], int], None]] = (),
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


# --- helpers ----------------------------------------------------------------------------------


def _rows_text(value: Rows) -> str:
    if isinstance(value, int):
        return str(value)
    values = list(value)
    if len(values) > 4:
        return f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)} rows)"
    return str(values) if len(values) != 1 else str(values[0])


def _view_mean(x: torch.Tensor, views: int) -> torch.Tensor:
    """Rows ``view * N + row`` -> mean over views, shape N x ..."""
    if views == 1:
        return x
    return x.reshape(views, -1, *x.shape[1:]).mean(0)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2) if x.dim() > 2 else x


def _check_index(layer: str, values: Rows, what: str) -> Callable:
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


# --- objectives -------------------------------------------------------------------------------


def channel(layer: str, channels: Rows) -> Objective:
    """Mean activation of one channel of ``layer`` (row i: ``channels[i]``)."""

    def fn(ctx: Context) -> torch.Tensor:
        act = _view_mean(_spatial_mean(ctx.acts[layer]), ctx.views)
        return ctx.own_channel(layer, act, channels)

    objective = Objective(
        fn,
        f"channel({layer}, {_rows_text(channels)})",
        [layer],
        checks=[_check_index(layer, channels, "channel")],
    )
    objective.channel_of = (layer, channels)
    return objective


def neuron(layer: str, channels: Rows, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of one unit of a channel at (x, y), the centre by default."""

    def fn(ctx: Context) -> torch.Tensor:
        act = ctx.acts[layer]
        if act.dim() == 4:
            h, w = act.shape[2:]
            act = act[:, :, h // 2 if y is None else y, w // 2 if x is None else x]
        return ctx.own_channel(layer, _view_mean(act, ctx.views), channels)

    where = "" if x is None and y is None else f", x={x}, y={y}"
    objective = Objective(
        fn,
        f"neuron({layer}, {_rows_text(channels)}{where})",
        [layer],
        checks=[_check_index(layer, channels, "channel")],
    )
    objective.channel_of = (layer, channels)
    return objective


def layer(name: str) -> Objective:
    """DeepDream: the mean of the squared activations of a whole layer."""

    def fn(ctx: Context) -> torch.Tensor:
        act = ctx.acts[name]
        return _view_mean(act.pow(2).flatten(1).mean(1), ctx.views)

    return Objective(fn, f"layer({name})", [name])


def class_logit(classes: Rows, label: str | None = None) -> Objective:
    """The class score before softmax (the study's class model, Simonyan et al. 2014)."""

    def fn(ctx: Context) -> torch.Tensor:
        logits = _view_mean(ctx.acts[OUTPUT].flatten(1), ctx.views)
        index = ctx.pick(classes, "classes").to(logits.device)
        return logits.gather(1, index[:, None])[:, 0]

    return Objective(
        fn,
        f"logit({label or _rows_text(classes)})",
        [OUTPUT],
        checks=[_check_index(OUTPUT, classes, "class")],
    )


def class_margin(classes: Rows, label: str | None = None) -> Objective:
    """Class score minus the mean score of all classes: favours class-specific features."""

    def fn(ctx: Context) -> torch.Tensor:
        logits = _view_mean(ctx.acts[OUTPUT].flatten(1), ctx.views)
        index = ctx.pick(classes, "classes").to(logits.device)
        return logits.gather(1, index[:, None])[:, 0] - logits.mean(1)

    return Objective(
        fn,
        f"margin({label or _rows_text(classes)})",
        [OUTPUT],
        checks=[_check_index(OUTPUT, classes, "class")],
    )


def class_log_softmax(classes: Rows, label: str | None = None) -> Objective:
    """Log-probability of the class (score minus log-sum-exp of all scores): the class is
    pushed up and, once it leads, only against the classes that still compete with it."""

    def fn(ctx: Context) -> torch.Tensor:
        logits = _view_mean(ctx.acts[OUTPUT].flatten(1), ctx.views)
        index = ctx.pick(classes, "classes").to(logits.device)
        return logits.log_softmax(1).gather(1, index[:, None])[:, 0]

    return Objective(
        fn,
        f"log_softmax({label or _rows_text(classes)})",
        [OUTPUT],
        checks=[_check_index(OUTPUT, classes, "class")],
    )


def _act_and_direction(
    ctx: Context, layer: str, vector: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatially averaged activations of ``layer`` (N x C) and each row's direction (N x C
    or 1 x C)."""
    act = _view_mean(_spatial_mean(ctx.acts[layer]), ctx.views)
    vec = vector.to(act.device, act.dtype)
    if vec.dim() == 2 and ctx.rows is not None:
        vec = vec[ctx.rows.to(act.device)]
    return act, (vec if vec.dim() == 2 else vec[None])


def _direction_check(layer: str, vector: torch.Tensor):
    def check(shapes: dict[str, tuple[int, ...]], batch: int) -> None:
        shape = shapes.get(layer)
        if shape is not None and vector.shape[-1] != shape[0]:
            raise ConvsightError(
                f"direction has {vector.shape[-1]} entries; layer '{layer}' has {shape[0]} channels"
            )
        if vector.dim() == 2 and vector.shape[0] != batch:
            raise ConvsightError(f"{vector.shape[0]} directions given for {batch} rows")

    return check


def direction(layer: str, vector: torch.Tensor) -> Objective:
    """Mean dot product of the activation vectors of ``layer`` with ``vector`` (C or N x C)."""
    vector = torch.as_tensor(vector, dtype=torch.float32)

    def fn(ctx: Context) -> torch.Tensor:
        act, vec = _act_and_direction(ctx, layer, vector)
        return (act * vec).sum(1)

    return Objective(fn, f"direction({layer})", [layer], checks=[_direction_check(layer, vector)])


def direction_cossim(
    layer: str, vector: torch.Tensor, power: float = 2.0, label: str | None = None
) -> Objective:
    """Dot product with ``vector`` times max(cosine, 0.1)^power (Lucid's ``dot x cossim``):
    rewards activations that point along the direction, not only large ones."""
    vector = torch.as_tensor(vector, dtype=torch.float32)

    def fn(ctx: Context) -> torch.Tensor:
        act, vec = _act_and_direction(ctx, layer, vector)
        dot = (act * vec).sum(1)
        cos = dot / (act.norm(dim=1) * vec.norm(dim=1) + 1e-8)
        return dot * cos.clamp(min=0.1) ** power

    text = f"cossim({label})" if label else f"direction_cossim({layer})"
    return Objective(fn, text, [layer], checks=[_direction_check(layer, vector)])


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of each row's Gram matrix to the other rows'.

    The one batch-coupled objective: a row's value depends on the other rows.
    """

    def fn(ctx: Context) -> torch.Tensor:
        act = _view_mean(ctx.acts[layer], ctx.views)
        n, c = act.shape[:2]
        if n < 2:
            return act.new_zeros(n)
        flat = act.reshape(n, c, -1)
        gram = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
        sim = gram @ gram.T
        return -(sim.sum(1) - sim.diagonal()) / (n - 1)

    return Objective(fn, f"diversity({layer})", [layer], coupled=True)


# --- penalties --------------------------------------------------------------------------------


def _space(ctx: Context, space: str) -> torch.Tensor:
    return ctx.input if space == "input" else ctx.image


def l1(space: str = "input") -> Objective:
    """Mean absolute value of the image (model input space by default, as the study)."""
    return Objective(lambda ctx: _space(ctx, space).abs().flatten(1).mean(1), "L1", penalty=True)


def l2(space: str = "input") -> Objective:
    """Mean squared value of the image (Simonyan et al.'s L2 regularizer)."""
    return Objective(lambda ctx: _space(ctx, space).pow(2).flatten(1).mean(1), "L2", penalty=True)


def total_variation(space: str = "pixel") -> Objective:
    """Mean absolute difference of neighbouring pixels."""

    def fn(ctx: Context) -> torch.Tensor:
        x = _space(ctx, space)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, "TV", penalty=True)


def blur(space: str = "pixel") -> Objective:
    """Mean squared distance of the image to its own 3x3 box blur (held fixed)."""

    def fn(ctx: Context) -> torch.Tensor:
        x = _space(ctx, space)
        c = x.shape[1]
        kernel = x.new_ones(c, 1, 3, 3) / 9
        blurred = F.conv2d(F.pad(x, [1] * 4, mode="replicate"), kernel, groups=c).detach()
        return (x - blurred).pow(2).flatten(1).mean(1)

    return Objective(fn, "blur", penalty=True)


def activation_penalty(layers: Sequence[str]) -> Objective:
    """Mean absolute activation, summed over ``layers`` (penalize each conv layer)."""
    layers = list(layers)

    def fn(ctx: Context) -> torch.Tensor:
        total = 0
        for name in layers:
            total = total + _view_mean(ctx.acts[name].abs().flatten(1).mean(1), ctx.views)
        return total

    return Objective(fn, f"act-L1({', '.join(layers)})", layers, penalty=True)
