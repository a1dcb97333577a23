"""Which channels carried one decision: each channel's relevance at chosen layers, and the
relevance on the input that flows through one channel alone (its conditional heatmap).

Two methods, both a backward pass from the target's score:

- ``grad_x_act`` (any model): a channel's relevance is its activation times the gradient of
  the score, summed over space (Olah et al. 2018, "The Building Blocks of Interpretability");
  the input heatmap is input x gradient, with the input as the network sees it (normalized).
- ``crp`` (models LRP has rules for): Concept Relevance Propagation (Achtibat et al. 2023,
  https://arxiv.org/abs/2206.03208): the LRP relevance (zennit's composite, see
  :mod:`convsight.attribution.lrp`) at the layer, summed over space; the input heatmap is LRP's.

A conditional heatmap keeps, at the layer, only the chosen channel's relevance (the gradient of
the others is zeroed) and carries it on down to the input; the rules are linear in the relevance
coming down, so the conditional heatmaps of all channels of a layer sum to the full heatmap.
Every hook is taken off on return (zennit's, and the ones that record the layers' outputs); a
layer is read as its own output even where an in-place operation follows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from convsight.attribution.base import check_inputs
from convsight.attribution.cam import own_output
from convsight.attribution.lrp import (
    CompositeName,
    check_lrp_support,
    code_ops,
    lrp_context,
    output_relevance,
    score_gradient,
)
from convsight.engines import chunks, predict_classes, select
from convsight.errors import ConvsightError
from convsight.layers import check_layers, get_layer
from convsight.models import Model
from convsight.targets import Target, TargetLike, Targets, repeated, resolve_targets

ChannelMethod = Literal["grad_x_act", "crp"]
CHANNEL_METHODS: tuple[str, ...] = get_args(ChannelMethod)


@dataclass(frozen=True)
class LayerRelevance:
    """One layer's relevance for the decision.

    ``maps`` is the relevance at the layer's output (C x h x w for conv maps, C for a vector);
    ``relevance`` each channel's signed relevance, summed over space.
    """

    layer: str
    maps: torch.Tensor

    @property
    def relevance(self) -> torch.Tensor:
        """Each channel's signed relevance (C), summed over space."""
        return self.maps.flatten(1).sum(1) if self.maps.dim() > 1 else self.maps

    @property
    def total(self) -> float:
        """The layer's relevance: the sum of its channels'."""
        return float(self.relevance.sum())

    @property
    def share(self) -> torch.Tensor:
        """Each channel's signed share: its relevance over the sum of every channel's
        absolute relevance (the shares' absolute values sum to 1; all 0 when nothing is
        relevant). Unlike relevance / total, it stays bounded when channels cancel out."""
        scale = self.relevance.abs().sum()
        return self.relevance / scale if scale > 0 else torch.zeros_like(self.relevance)

    def top(self, k: int) -> list[int]:
        """The ``k`` channels with the largest signed relevance, largest first."""
        k = min(k, self.relevance.numel())
        return self.relevance.topk(k).indices.tolist()


@dataclass(frozen=True)
class ChannelRelevance:
    """The channels that carried one decision: per layer, each channel's relevance.

    ``heatmap`` is the relevance on the input (H x W, colour channels summed), ``score`` the
    target's score, ``target`` the target in words and ``classes`` its class (or None).
    ``composite`` and ``canonizer`` say how CRP ran (None for ``grad_x_act``);
    ``sums_outside_rules`` how many sums of two tensors (residual additions) the model did in
    its own code, outside every LRP rule, per forward pass (None for ``grad_x_act``).
    """

    method: str
    target: str
    classes: list[int] | None
    score: float
    heatmap: torch.Tensor
    layers: dict[str, LayerRelevance] = field(default_factory=dict)
    composite: str | None = None
    canonizer: str | None = None
    sums_outside_rules: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain numbers: the settings, the score and each layer's relevance and shares."""
        settings = ("method", "composite", "canonizer", "target", "classes", "score")
        extra = (
            {}
            if self.sums_outside_rules is None
            else {"sums_outside_rules": self.sums_outside_rules}
        )
        return {
            **{name: getattr(self, name) for name in settings},
            **extra,
            "input_relevance": float(self.heatmap.sum()),
            "layers": {
                name: {
                    "total": layer.total,
                    "relevance": layer.relevance.tolist(),
                    "share": layer.share.tolist(),
                }
                for name, layer in self.layers.items()
            },
        }


def _prepare(
    model: Model,
    image: torch.Tensor,
    target: TargetLike,
    layers: Sequence[str],
    method: str,
    canonize: bool = True,
) -> tuple[torch.Tensor, Target]:
    """Checked pixels (1 x C x H x W) and the bound target, before any work."""
    if method not in CHANNEL_METHODS:
        raise ConvsightError(f"unknown channel method '{method}' ({', '.join(CHANNEL_METHODS)})")
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        raise ConvsightError("give one image: pixels C x H x W (or 1 x C x H x W) in [0, 1]")
    pixels = check_inputs(model, image if image.dim() == 4 else image.unsqueeze(0))
    if pixels.shape[0] != 1:
        raise ConvsightError(f"one decision is one image; got {pixels.shape[0]}")
    if not layers:
        raise ConvsightError("name at least one layer")
    check_layers(model.module, layers)
    if method == "crp":
        check_lrp_support(model, canonize)
    bound = resolve_targets(model, target, 1)
    if bound is None:
        bound = resolve_targets(model, int(predict_classes(model, pixels)[0]), 1)
    assert bound is not None
    return pixels, bound


@contextmanager
def _recording(
    model: Model, layers: Sequence[str], method: str, composite: str, canonize: bool
) -> Iterator[tuple[dict[str, dict[str, torch.Tensor]], str | None]]:
    """Inside the block: the composite registered (CRP) and each layer's own output recorded;
    yields the records and the canonizer. zennit's hooks come first, so a backward pass that
    starts at a recorded output goes through the layer's own rule."""
    with ExitStack() as stack, torch.enable_grad():
        canonizer = None
        if method == "crp":
            canonizer = stack.enter_context(lrp_context(model, composite, canonize))
        records = {name: stack.enter_context(own_output(model.module, name)) for name in layers}
        yield records, canonizer


def _start(output: torch.Tensor, targets: Targets, method: str) -> torch.Tensor:
    """What the backward pass starts from: LRP's output relevance, or the score's gradient."""
    return output_relevance(output, targets) if method == "crp" else score_gradient(output, targets)


def _relevance(value: torch.Tensor, grad: torch.Tensor | None, method: str) -> torch.Tensor:
    """Relevance at a tensor from what came down to it: LRP's is the modified gradient
    itself, gradient x activation multiplies by the value."""
    if grad is None:  # the score does not depend on this layer
        return torch.zeros_like(value)
    return grad if method == "crp" else value.detach() * grad


def channel_relevance(
    model: Model,
    image: torch.Tensor,
    target: TargetLike = None,
    layers: Sequence[str] = (),
    method: ChannelMethod = "grad_x_act",
    composite: CompositeName = "epsilon_plus_flat",
    canonize: bool = True,
) -> ChannelRelevance:
    """Each channel's relevance at ``layers`` for the target's score on one image (pixels
    C x H x W in [0, 1]; target: a class index or name, any :class:`Target`, None for the
    predicted class). ``composite`` and ``canonize`` are CRP's (see :class:`LRP`)."""
    layers = list(dict.fromkeys(layers))
    pixels, targets = _prepare(model, image, target, layers, method, canonize)
    with _recording(model, layers, method, composite, canonize) as (records, canonizer):
        x = model.normalize(pixels).detach().requires_grad_(True)
        output = model.module(x)
        values = [records[name]["output"] for name in layers]
        grads = torch.autograd.grad(
            output, [x, *values], _start(output, targets, method), allow_unused=True
        )
    heatmap = _relevance(x, grads[0], method)[0].sum(0)
    found = {
        name: LayerRelevance(name, _relevance(value, grad, method)[0].detach())
        for name, value, grad in zip(layers, values, grads[1:], strict=True)
    }
    return ChannelRelevance(
        method=method,
        target=targets.describe(),
        classes=targets.classes(),
        score=float(select(output.detach(), targets)[0]),
        heatmap=heatmap.detach(),
        layers=found,
        composite=composite if method == "crp" else None,
        canonizer=canonizer,
        sums_outside_rules=code_ops(model, canonize).sums if method == "crp" else None,
    )


def conditional_heatmaps(
    model: Model,
    image: torch.Tensor,
    layer: str,
    channels: Sequence[int] | torch.Tensor,
    target: TargetLike = None,
    method: ChannelMethod = "grad_x_act",
    composite: CompositeName = "epsilon_plus_flat",
    canonize: bool = True,
    batch_size: int = 16,
) -> torch.Tensor:
    """The relevance on the input (K x H x W) that flows through each of ``channels`` of
    ``layer`` alone, for the target's score on one image: the image is repeated, one row per
    channel (``batch_size`` rows per pass), and at the layer each row keeps only its channel's
    relevance on the way down. Over all channels of the layer they sum to the full heatmap."""
    pixels, targets = _prepare(model, image, target, [layer], method, canonize)
    wanted = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    maps = []
    with _recording(model, [layer], method, composite, canonize) as (records, _):
        for part in chunks(wanted.numel(), batch_size):
            rows = part.stop - part.start
            x = model.normalize(pixels).repeat(rows, 1, 1, 1).detach().requires_grad_(True)
            output = model.module(x)
            value = records[layer]["output"]
            _check_channels(layer, wanted, value)
            start = _start(output, repeated(targets, 1, rows), method)
            (down,) = torch.autograd.grad(output, value, start, retain_graph=True)
            mask = torch.zeros_like(down)
            mask[torch.arange(rows), wanted[part].to(mask.device)] = 1
            (grad,) = torch.autograd.grad(value, x, down * mask)
            maps.append(_relevance(x, grad, method).sum(1).detach())
    return torch.cat(maps) if maps else pixels.new_zeros(0, *pixels.shape[2:])


@contextmanager
def _graph_from_first(module: torch.nn.Module, layers: Sequence[str]) -> Iterator[dict]:
    """Inside the block, each forward pass records each layer's own output (the network goes
    on with a copy, as in :func:`~convsight.attribution.cam.own_output`); the first of the
    layers to run is made a leaf that requires grad, so nothing before it is kept for the
    backward pass. Clear the records between passes."""
    records: dict[str, torch.Tensor] = {}

    def hook_of(name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: object, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise ConvsightError(f"layer '{name}' gives {type(output).__name__}, not a tensor")
            if not records:  # the first layer reached: the backward pass stops here
                output = output.detach().requires_grad_(True)
            records[name] = output
            return output.clone()

        return hook

    handles = [get_layer(module, name).register_forward_hook(hook_of(name)) for name in layers]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def batch_relevance(
    model: Model, pixels: torch.Tensor, targets: Targets, layers: Sequence[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each of ``layers``' own output and its gradient x activation (both N x C x h x w, or
    N x C) for each row's target score on a batch (pixels N x C x H x W in [0, 1], ``targets``
    bound to N rows): one forward pass, and one backward pass from the scores down to the first
    of the layers only. Summed over space, a row's relevance is what
    :func:`channel_relevance` (``grad_x_act``) gives for that image."""
    return relevance_pass(model, model.normalize(pixels), targets, layers)[0]


def relevance_pass(
    model: Model, x: torch.Tensor, targets: Targets | None, layers: Sequence[str]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """:func:`batch_relevance` on an already normalized batch ``x``, with the model's output
    (detached). ``targets`` None: each row's predicted class (the largest score of the same
    forward pass); an output that is not one row of scores per image then gives no maps."""
    layers = list(dict.fromkeys(layers))
    with _graph_from_first(model.module, layers) as records, torch.enable_grad():
        records.clear()
        output = model.module(x)
        if targets is None and output.dim() != 2:
            return {}, output.detach()
        values = [records[name] for name in layers]
        rows = output.detach().argmax(1) if targets is None else targets
        start = score_gradient(output, rows)
        grads = torch.autograd.grad(output, values, start, allow_unused=True)
    found = {
        name: (value.detach(), _relevance(value, grad, "grad_x_act").detach())
        for name, value, grad in zip(layers, values, grads, strict=True)
    }
    return found, output.detach()


def batch_relevance_maps(
    model: Model, pixels: torch.Tensor, targets: Targets, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The gradient x activation maps of :func:`batch_relevance` alone."""
    found = batch_relevance(model, pixels, targets, layers)
    return {name: relevance for name, (_, relevance) in found.items()}


def _check_channels(layer: str, wanted: torch.Tensor, value: torch.Tensor) -> None:
    count = value.shape[1]
    bad = wanted[(wanted < 0) | (wanted >= count)]
    if bad.numel():
        raise ConvsightError(
            f"layer '{layer}' has {count} channels (0-{count - 1}); no channel {int(bad[0])}"
        )
