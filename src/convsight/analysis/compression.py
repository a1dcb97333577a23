"""Removing a conv layer's filters, and choosing which: the study's compression idea.

The study saw first-layer filters that are near-copies of each other up to colour order or a
rotation, and suggested keeping one of each such group ("we could potentially compress the
number of filters ... this may impair the model"). Here a filter is removed as pruning removes
it: its channel is zeroed where the next channel-mixing layer reads it, after the ReLU, batch
norm and pooling that act on each channel alone. That computes exactly what deleting the
filter, its batch-norm entry and the next layer's weights for that channel computes; zeroing
the conv's output instead would not, when batch norm follows (the norm turns a zero channel
into a constant). Only sequential blocks are supported, and that is checked, not assumed.

Three ways to choose ``n`` filters to remove:

* ``redundant``: the study's idea. In every group of filters at least ``threshold`` alike under
  :func:`~convsight.analysis.filters.filter_redundancy` (Pearson's r, best over rotations, flips
  and colour orders) the filter with the largest L1 norm stays and the others go.
* ``l1``: the ``n`` filters of smallest L1 norm, the usual pruning baseline (Li et al.,
  "Pruning Filters for Efficient ConvNets", ICLR 2017, https://arxiv.org/abs/1608.08710).
* ``random``: ``n`` filters drawn at random.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from convsight.analysis.filters import Redundancy
from convsight.errors import ConvsightError
from convsight.layers import ELEMENTWISE_LAYERS, get_layer

# Layers that act on each channel alone: a zero channel stays zero through them (max pooling
# of zeros is zero; eval-mode dropout is the identity), so the channel may be zeroed after them.
CHANNELWISE_LAYERS: tuple[type[nn.Module], ...] = (
    *ELEMENTWISE_LAYERS,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Dropout,
    nn.Dropout2d,
)
STRATEGIES = ("redundant", "l1", "random")


@dataclass(frozen=True)
class _Call:
    name: str
    module: nn.Module
    reads: torch.Tensor | None  # the tensor it read, and its value before the call
    read_value: torch.Tensor | None
    output: object
    output_value: torch.Tensor | None  # its value when the call returned


def _snapshot(value: object) -> torch.Tensor | None:
    return value.detach().clone() if isinstance(value, torch.Tensor) else None


def _calls(module: nn.Module, example: torch.Tensor) -> list[_Call]:
    """Every leaf module's call, in order: the tensor it read and what it returned, each with
    its value at the time (an in-place op later changes the tensor, not the snapshot)."""
    calls: list[_Call] = []
    reads: list[tuple[object, torch.Tensor | None]] = []
    handles = []

    def before(mod, args):
        first = args[0] if args else None
        reads.append((first, _snapshot(first)))

    for name, sub in module.named_modules():
        if next(sub.children(), None) is not None:
            continue

        def after(mod, args, output, name=name):
            first, value = reads.pop()
            read = first if isinstance(first, torch.Tensor) else None
            calls.append(_Call(name, mod, read, value, output, _snapshot(output)))

        handles.append(sub.register_forward_pre_hook(before))
        handles.append(sub.register_forward_hook(after))
    # random, not zero: a zero image through an untrained network can be zero everywhere, and
    # then a residual sum would leave the values it changes equal
    probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            module.eval()(probe.to(example))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _reads_output_of(call: _Call, point: _Call) -> bool:
    """Whether ``call`` read ``point``'s output as ``point`` returned it (the same tensor, not
    changed in place since, e.g. by a residual ``+=``)."""
    return (
        call.reads is point.output
        and call.read_value is not None
        and point.output_value is not None
        and torch.equal(call.read_value, point.output_value)
    )


def removal_points(
    module: nn.Module, layers: Sequence[str], example: torch.Tensor
) -> dict[str, str]:
    """For each conv layer: the layer whose output carries its channels into the next layer
    that mixes channels: the conv itself, or the last of the channel-wise layers (activation,
    batch norm, pooling, dropout) that read its output one after the other. One probe forward
    pass for all of them.

    Fails in one sentence when a layer is not a Conv2d, when it (or a channel-wise layer after
    it) runs more than once in a forward pass (a hook there would zero its other outputs too),
    or when what follows does not read its output unchanged (a residual sum, a functional op):
    a zeroed channel there would not be a removed filter.
    """
    for layer in layers:
        _conv(module, layer)
    calls = _calls(module, example) if layers else []
    runs = {name: sum(c.name == name for c in calls) for name in {c.name for c in calls}}
    return {layer: _point_after(calls, runs, layer) for layer in layers}


def _conv(module: nn.Module, layer: str) -> nn.Conv2d:
    """Conv ``layer`` of ``module``; any other kind of layer fails in one sentence."""
    conv = get_layer(module, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ConvsightError(f"layer '{layer}' is a {type(conv).__name__}, not a Conv2d")
    return conv


def _point_after(calls: list[_Call], runs: dict[str, int], layer: str) -> str:
    index = [i for i, call in enumerate(calls) if call.name == layer]
    if len(index) != 1:
        raise ConvsightError(
            f"layer '{layer}' runs {len(index)} times in one forward pass, not once"
        )
    point = calls[index[0]]
    for call in calls[index[0] + 1 :]:
        if not _reads_output_of(call, point):
            raise ConvsightError(
                f"the layer after '{point.name}' ('{call.name}') does not read its output, so "
                f"removing filters of '{layer}' is supported only in sequential blocks"
            )
        if not isinstance(call.module, CHANNELWISE_LAYERS):
            break
        if runs[call.name] != 1:
            raise ConvsightError(
                f"'{call.name}' after '{layer}' runs {runs[call.name]} times in one forward "
                "pass, so its filters cannot be removed there alone"
            )
        point = call
    return point.name


@contextmanager
def filters_removed(
    module: nn.Module,
    removed: Mapping[str, Sequence[int]],
    example: torch.Tensor | None = None,
    points: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Within the block, ``module`` runs as if the filters ``removed[layer]`` of each conv
    layer were pruned away (see the module docstring); gradients to them are zero.

    ``points``: the :func:`removal_points` already found (a name per layer); without them
    they are found from one forward pass of ``example``.
    """
    if points is None:
        if example is None:
            raise ValueError("filters_removed needs an example input or the removal points")
        points = removal_points(module, list(removed), example)
    handles = []
    try:
        for layer, channels in removed.items():
            conv = _conv(module, layer)
            bad = [c for c in channels if not 0 <= c < conv.out_channels]
            if bad:
                raise ConvsightError(
                    f"filter(s) {bad} out of range for '{layer}' ({conv.out_channels} filters)"
                )
            keep = torch.ones(conv.out_channels)
            keep[list(channels)] = 0.0

            def zero(mod, args, output, keep=keep):
                return output * keep.to(output).view(1, -1, *([1] * (output.dim() - 2)))

            point = get_layer(module, points[layer])
            handles.append(point.register_forward_hook(zero))
        yield
    finally:
        for handle in handles:
            handle.remove()


def filter_norms(module: nn.Module, layer: str) -> torch.Tensor:
    """The L1 norm of each filter of conv ``layer``."""
    return _conv(module, layer).weight.detach().abs().sum(dim=(1, 2, 3)).float().cpu()


def redundant_filters(redundancy: Redundancy, norms: torch.Tensor, threshold: float) -> list[int]:
    """The filters to remove at ``threshold``: all but the largest-L1 one of every group of
    filters at least ``threshold`` alike."""
    removed: list[int] = []
    for group in redundancy.groups(threshold):
        keep = max(group, key=lambda i: (float(norms[i]), -i))
        removed.extend(i for i in group if i != keep)
    return sorted(removed)


def smallest_l1(norms: torch.Tensor, n: int) -> list[int]:
    """The ``n`` filters of smallest L1 norm (ties: the lower index)."""
    order = sorted(range(len(norms)), key=lambda i: (float(norms[i]), i))
    return sorted(order[:n])


def random_filters(count: int, n: int, seed: int) -> list[int]:
    """``n`` of ``count`` filters drawn at random (reproducibly from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=generator)[:n].tolist())
