"""What is maximized: objectives with algebra (``+``, ``-``, scalar ``*``) and descriptions.

An objective maps a :class:`Context` (the layer outputs, the model output, the image of one
optimization step) to one value per batch row, so N rows optimize N objectives at once:
``channel("features.28", [0, 1, 2])`` gives row i the mean of channel ``[0, 1, 2][i]``.
Penalties (``l1``, ``total_variation``, ...) are positive measures; subtract them:
``channel("features.28", 7) - 0.1 * l1()``. Each is a function of the context made an
objective by :func:`objective` (:mod:`convsight.optvis.objective_base`); a new one is written
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from convsight.errors import ConvsightError
from convsight.optvis.objective_base import OUTPUT as OUTPUT
from convsight.optvis.objective_base import Check, rows_text
from convsight.optvis.objective_base import Context as Context
from convsight.optvis.objective_base import Objective as Objective
from convsight.optvis.objective_base import Rows as Rows
from convsight.optvis.objective_base import objective as objective
from convsight.targets import Target


def _view_mean(x: torch.Tensor, views: int) -> torch.Tensor:
    """Rows ``view * N + row`` -> mean over views, shape N x ..."""
    if views == 1:
        return x
    return x.reshape(views, -1, *x.shape[1:]).mean(0)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2) if x.dim() > 2 else x


# --- objectives -------------------------------------------------------------------------------


@objective(layer="layer", index="channels", own_channel=True)
def channel(ctx: Context, layer: str, channels: Rows) -> torch.Tensor:
    """Mean activation of one channel of ``layer`` (row i: ``channels[i]``)."""
    act = _view_mean(_spatial_mean(ctx.acts[layer]), ctx.views)
    return ctx.own_channel(layer, act, channels)


@objective(layer="layer", index="channels", own_channel=True)
def neuron(
    ctx: Context, layer: str, channels: Rows, x: int | None = None, y: int | None = None
) -> torch.Tensor:
    """Activation of one unit of a channel at (x, y), the centre by default."""
    act = ctx.acts[layer]
    if act.dim() == 4:
        h, w = act.shape[2:]
        act = act[:, :, h // 2 if y is None else y, w // 2 if x is None else x]
    return ctx.own_channel(layer, _view_mean(act, ctx.views), channels)


@objective(layer="name")
def layer(ctx: Context, name: str) -> torch.Tensor:
    """DeepDream: the mean of the squared activations of a whole layer."""
    return _view_mean(ctx.acts[name].pow(2).flatten(1).mean(1), ctx.views)


#: What a class objective scores: the class score before softmax ("logit"), that minus the
#: mean score of all classes ("margin"), or the log-probability ("logsoftmax").
ClassScore = Literal["logit", "margin", "logsoftmax"]
_CLASS_SCORE_NAMES = {"logit": "logit", "margin": "margin", "logsoftmax": "log_softmax"}


def _class_text(classes: Rows, kind: str, label: str | None) -> str:
    if kind not in _CLASS_SCORE_NAMES:
        raise ConvsightError(
            f"unknown class score '{kind}': one of {', '.join(get_args(ClassScore))}"
        )
    return f"{_CLASS_SCORE_NAMES[kind]}({label or rows_text(classes)})"


@objective(_class_text, layer=OUTPUT, index="classes")
def class_score(
    ctx: Context, classes: Rows, kind: ClassScore = "logit", label: str | None = None
) -> torch.Tensor:
    """The score of each row's class, from the scores before softmax: ``"logit"`` the score
    itself (the study's class model, Simonyan et al. 2014); ``"margin"`` minus the mean score
    of all classes (favours class-specific features); ``"logsoftmax"`` the log-probability
    (score minus log-sum-exp of all scores: the class is pushed up and, once it leads, only
    against the classes that still compete with it). ``label`` names the classes in the
    description."""
    logits = _view_mean(ctx.acts[OUTPUT].flatten(1), ctx.views)
    if kind == "logsoftmax":
        logits = logits.log_softmax(1)
    index = ctx.pick(classes, "classes").to(logits.device)
    score = logits.gather(1, index[:, None])[:, 0]
    return score - logits.mean(1) if kind == "margin" else score


def _target_text(target: Target, label: str | None = None) -> str:
    return f"target({label or target.describe()})"


@objective(_target_text, layer=OUTPUT)
def target_score(ctx: Context, target: Target, label: str | None = None) -> torch.Tensor:
    """Any target of the model's output (:mod:`convsight.targets`, bound to the batch: a
    class, a margin, a segment, an output of a regression net, one per row), on the mean of
    each image's views. ``label`` names it in the description."""
    output = ctx.acts[OUTPUT]
    output = _view_mean(output, ctx.views)
    return (target if ctx.rows is None else target[ctx.rows.cpu()])(output)


def _act_and_direction(
    ctx: Context, layer: str, vector: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatially averaged activations of ``layer`` (N x C) and each row's direction (N x C
    or 1 x C)."""
    act = _view_mean(_spatial_mean(ctx.acts[layer]), ctx.views)
    vec = torch.as_tensor(vector, dtype=torch.float32).to(act.device, act.dtype)
    if vec.dim() == 2 and ctx.rows is not None:
        vec = vec[ctx.rows.to(act.device)]
    return act, (vec if vec.dim() == 2 else vec[None])


def _direction_check(layer: str, vector: torch.Tensor, **_: object) -> Check:
    vector = torch.as_tensor(vector, dtype=torch.float32)

    def check(shapes: dict[str, tuple[int, ...]], batch: int) -> None:
        shape = shapes.get(layer)
        if shape is not None and vector.shape[-1] != shape[0]:
            raise ConvsightError(
                f"direction has {vector.shape[-1]} entries; layer '{layer}' has {shape[0]} channels"
            )
        if vector.dim() == 2 and vector.shape[0] != batch:
            raise ConvsightError(f"{vector.shape[0]} directions given for {batch} rows")

    return check


@objective("direction({layer})", layer="layer", check=_direction_check)
def direction(ctx: Context, layer: str, vector: torch.Tensor) -> torch.Tensor:
    """Mean dot product of the activation vectors of ``layer`` with ``vector`` (C or N x C)."""
    act, vec = _act_and_direction(ctx, layer, vector)
    return (act * vec).sum(1)


def _cossim_text(layer: str, vector: torch.Tensor, power: float, label: str | None) -> str:
    return f"cossim({label})" if label else f"direction_cossim({layer})"


@objective(_cossim_text, layer="layer", check=_direction_check)
def direction_cossim(
    ctx: Context, layer: str, vector: torch.Tensor, power: float = 2.0, label: str | None = None
) -> torch.Tensor:
    """Dot product with ``vector`` times max(cosine, 0.1)^power (Lucid's ``dot x cossim``):
    rewards activations that point along the direction, not only large ones."""
    act, vec = _act_and_direction(ctx, layer, vector)
    dot = (act * vec).sum(1)
    cos = dot / (act.norm(dim=1) * vec.norm(dim=1) + 1e-8)
    return dot * cos.clamp(min=0.1) ** power


@objective(layer="layer", coupled=True)
def diversity(ctx: Context, layer: str) -> torch.Tensor:
    """Minus the mean cosine similarity of each row's Gram matrix to the other rows'.

    The one batch-coupled objective: a row's value depends on the other rows.
    """
    act = _view_mean(ctx.acts[layer], ctx.views)
    n, c = act.shape[:2]
    if n < 2:
        return act.new_zeros(n)
    flat = act.reshape(n, c, -1)
    gram = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
    sim = gram @ gram.T
    return -(sim.sum(1) - sim.diagonal()) / (n - 1)


# --- penalties --------------------------------------------------------------------------------


def _space(ctx: Context, space: str) -> torch.Tensor:
    return ctx.input if space == "input" else ctx.image


@objective("L1", penalty=True)
def l1(ctx: Context, space: str = "input") -> torch.Tensor:
    """Mean absolute value of the image (model input space by default, as the study)."""
    return _space(ctx, space).abs().flatten(1).mean(1)


@objective("L2", penalty=True)
def l2(ctx: Context, space: str = "input") -> torch.Tensor:
    """Mean squared value of the image (Simonyan et al.'s L2 regularizer)."""
    return _space(ctx, space).pow(2).flatten(1).mean(1)


@objective("TV", penalty=True)
def total_variation(ctx: Context, space: str = "pixel") -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels."""
    x = _space(ctx, space)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


@objective("blur", penalty=True)
def blur(ctx: Context, space: str = "pixel") -> torch.Tensor:
    """Mean squared distance of the image to its own 3x3 box blur (held fixed)."""
    x = _space(ctx, space)
    c = x.shape[1]
    kernel = x.new_ones(c, 1, 3, 3) / 9
    blurred = F.conv2d(F.pad(x, [1] * 4, mode="replicate"), kernel, groups=c).detach()
    return (x - blurred).pow(2).flatten(1).mean(1)


@objective(lambda layers: f"act-L1({', '.join(layers)})", layer="layers", penalty=True)
def activation_penalty(ctx: Context, layers: Sequence[str]) -> torch.Tensor:
    """Mean absolute activation, summed over ``layers`` (penalize each conv layer)."""
    total = torch.zeros(())
    for name in layers:
        total = total + _view_mean(ctx.acts[name].abs().flatten(1).mean(1), ctx.views)
    return total
