"""The forward pass of a render: only as far as the objective needs, and for a channel
objective on a conv (or a per-channel layer after one) only each row's own channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convsight.errors import ConvsightError
from convsight.layers import ELEMENTWISE_LAYERS, capture, check_layers, forward_to, get_layer
from convsight.models import Model
from convsight.optvis.objectives import OUTPUT, Objective, Rows


class _StopAtInput(Exception):
    """Raised by a pre-hook once the target conv's input is known: the conv never runs."""


def sliced_target(objective: Objective) -> tuple[str, Rows] | None:
    """(layer, channels) if every non-penalty term reads one channel per row of one layer."""
    found = None
    for _, term in objective.terms():
        if term.penalty:
            if term.layers:
                return None
            continue
        if term.channel_of is None:
            return None
        if found is not None and (
            found[0] != term.channel_of[0]
            or list(np.atleast_1d(found[1])) != list(np.atleast_1d(term.channel_of[1]))
        ):
            return None
        found = term.channel_of
    return found


# Layers that act on each channel alone: a row's channel of their output needs only that
# channel of their input.
_CHANNELWISE = (*ELEMENTWISE_LAYERS, nn.MaxPool2d, nn.AvgPool2d)


def _conv_chain(module: nn.Module, name: str) -> tuple[nn.Conv2d, list[nn.Module]] | None:
    """(conv, layers after it) when ``name`` is a plain conv, or a per-channel layer that
    follows one in the same ``nn.Sequential`` with only per-channel layers between; else None."""
    layer = get_layer(module, name)
    after: list[nn.Module] = []
    if not isinstance(layer, nn.Conv2d):
        parent_name, _, last = name.rpartition(".")
        parent = get_layer(module, parent_name) if parent_name else module
        if not isinstance(parent, nn.Sequential) or not isinstance(layer, _CHANNELWISE):
            return None
        children = list(parent.named_children())
        i = [n for n, _ in children].index(last)
        while i >= 0 and isinstance(children[i][1], _CHANNELWISE):
            after.insert(0, children[i][1])
            i -= 1
        if i < 0:
            return None
        layer = children[i][1]
    if (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    ):
        return layer, after
    return None


def _per_channel(layer: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``layer`` on one channel per row (N x 1 x H x W, row i holding channel index[i])."""
    if isinstance(layer, nn.BatchNorm2d):
        if layer.training or layer.running_mean is None or layer.running_var is None:
            raise ConvsightError("slicing through batch norm needs it in eval mode")
        shape = (-1, 1, 1, 1)
        mean, var = layer.running_mean[index].view(shape), layer.running_var[index].view(shape)
        out = (x - mean) / torch.sqrt(var + layer.eps)
        if layer.affine:
            out = out * layer.weight[index].view(shape) + layer.bias[index].view(shape)
        return out
    return layer(x)


class Forward:
    """Run the model as far as the objective needs; return the needed outputs.

    With ``slice_channels`` and an objective on channels of one ``nn.Conv2d`` (one channel per
    row), the forward stops at that conv's input and computes only each row's own channel of
    it: the same values, 1/C of the target layer's work.
    """

    def __init__(self, model: Model, objective: Objective, slice_channels: bool = False) -> None:
        self.module = model.module
        layers = objective.layers
        self.names = [name for name in layers if name != OUTPUT]
        self.output = OUTPUT in layers
        check_layers(self.module, self.names)
        self.sliced: frozenset[str] = frozenset()
        target = sliced_target(objective) if slice_channels else None
        if target is not None and not self.output:
            chain = _conv_chain(self.module, target[0])
            if chain is not None:
                self.conv, self.after = chain
                self.channels = target[1]
                self.sliced = frozenset([target[0]])

    def _conv_input(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def hook(_module: nn.Module, inputs: tuple) -> None:
            seen.append(inputs[0])
            raise _StopAtInput

        handle = self.conv.register_forward_pre_hook(hook)
        try:
            self.module(x)
        except _StopAtInput:
            pass
        finally:
            handle.remove()
        if not seen:
            raise ConvsightError("the target layer did not run in the forward pass")
        return seen[0]

    def __call__(
        self, x: torch.Tensor, rows: torch.Tensor | None = None, views: int = 1
    ) -> dict[str, torch.Tensor]:
        if self.sliced:
            (name,) = self.sliced
            inp = self._conv_input(x)
            n, c, h, w = inp.shape
            if isinstance(self.channels, int):
                index = torch.full((n,), self.channels, dtype=torch.long)
            else:
                index = torch.as_tensor(list(self.channels), dtype=torch.long)
                index = (index if rows is None else index[rows]).repeat(views)
            conv = self.conv
            weight = conv.weight[index.to(conv.weight.device)]
            bias = conv.bias[index.to(conv.weight.device)] if conv.bias is not None else None
            out = F.conv2d(
                inp.reshape(1, n * c, h, w),
                weight,
                bias,
                conv.stride,
                conv.padding,
                conv.dilation,
                groups=n,
            )
            out = out.reshape(n, 1, *out.shape[2:])
            for layer in self.after:  # per-channel layers between the conv and the target
                out = _per_channel(layer, out, index.to(out.device))
            return {name: out}
        if not self.output:
            return forward_to(self.module, x, self.names)
        with capture(self.module, self.names) as acts:
            out = self.module(x)
            result = {name: acts[name] for name in self.names}
        result[OUTPUT] = out if isinstance(out, torch.Tensor) else out[0]
        return result


def probe_shapes(model: Model, objective: Objective, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (batch dropped) of each layer the objective needs, for input ``x``."""
    forward = Forward(model, objective)
    with torch.no_grad():
        acts = forward(x[:1])
    return {name: tuple(value.shape[1:]) for name, value in acts.items()}


@dataclass(frozen=True)
class Execution:
    """How the forward passes of a render run: rows per pass (0: auto), precision ("fp32" or
    "bf16" autocast), channels-last memory format, and computing only each row's channel of
    a sliced target (:class:`Forward`). The results are the same up to float rounding."""

    chunk: int = 0
    precision: str = "fp32"
    channels_last: bool = True
    slice_channels: bool = True
    note: str = ""  # why channels-last is not used, when it was asked for

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def on(self, module: nn.Module, device: torch.device) -> Iterator[None]:
        """On a CPU, the model in channels-last memory format while inside (faster)."""
        converted = self.channels_last and device.type == "cpu"
        if converted:
            module.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            if converted:
                module.to(memory_format=torch.contiguous_format)

    def chunks(
        self, device: torch.device, batch: int, size: tuple[int, int], coupled: bool
    ) -> list[slice]:
        """Rows per pass: all of them for a batch-coupled objective; else ``chunk``, or
        :func:`auto_chunk`."""
        chunk = batch if coupled else self.chunk or auto_chunk(device, batch, size)
        return [slice(i, min(i + chunk, batch)) for i in range(0, batch, chunk)]


def auto_chunk(device: torch.device, batch: int, size: tuple[int, int]) -> int:
    """Rows per pass: the whole batch on a GPU; on a CPU about 64x64x4 pixels a pass.

    Measured on 2 cores (VGG16, MobileNet v2 at 224): one row a pass is fastest per row;
    a batch of 16 is 1.5-5x slower per row (activations fall out of cache).
    """
    if device.type != "cpu":
        return batch
    return max(1, min(batch, (64 * 64 * 4) // (size[0] * size[1])))
