"""Layer addressing by ``named_modules`` name, context-managed capture and truncated forward."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convsight.errors import ConvsightError, UnknownLayerError

# Layers that act on each value alone in eval mode (activations, identity, dropout) and batch
# norm, which acts on each channel alone: each position and each channel of their output
# depends on that position and channel of their input only.
ELEMENTWISE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


TORCHSCRIPT_LAYERS = (
    "this model is TorchScript, whose layers take no hooks, so layer methods (convsight "
    "layers, activations, maximize, atlas, CAMs, guided backprop, the sanity check) need it as "
    "a PyTorch module (a checkpoint with its card, or Model.from_module); TorchScript works "
    "with classviz, and with saliency and evaluate's deletion/insertion for the saliency, ixg, "
    "smoothgrad, ig and occlusion methods"
)


def require_hookable(module: nn.Module) -> None:
    """Refuse a TorchScript module (or one that wraps it, ``wraps_torchscript``) before any
    layer work (hooks cannot be registered on it)."""
    if isinstance(module, torch.jit.ScriptModule) or getattr(module, "wraps_torchscript", False):
        raise ConvsightError(TORCHSCRIPT_LAYERS)


def layer_names(module: nn.Module) -> list[str]:
    """Every addressable layer name, in ``named_modules`` order (the root, '', excluded)."""
    return [name for name, _ in module.named_modules() if name]


def get_layer(module: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; an unknown name raises with the nearest names."""
    require_hookable(module)
    modules = dict(module.named_modules())
    if name in modules and name:
        require_hookable(modules[name])  # a scripted part of a PyTorch model
        return modules[name]
    names = layer_names(module)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"; nearest: {', '.join(close)}" if close else ""
    raise UnknownLayerError(
        f"unknown layer '{name}' ({len(names)} layers; `convsight layers MODEL` lists them){hint}"
    )


def check_layers(module: nn.Module, names: Sequence[str]) -> None:
    """Fail before any work if one of ``names`` is not a layer."""
    for name in names:
        get_layer(module, name)


def output_shapes(
    module: nn.Module, names: Sequence[str], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """Output shape (batch dimension dropped) of each named layer for ``example``.

    One truncated forward without gradients; unknown names fail first with the nearest names.
    """
    check_layers(module, names)
    with torch.no_grad():
        outputs = forward_to(module, example, list(dict.fromkeys(names)))
    return {name: tuple(outputs[name].shape[1:]) for name in names}


def check_map_layers(
    module: nn.Module, names: Sequence[str], example: torch.Tensor, why: str = ""
) -> dict[str, tuple[int, ...]]:
    """Fail before any work unless every named layer outputs C x H x W maps for ``example``;
    return the shapes. ``why`` ends the message (e.g. "; a CAM needs a conv layer")."""
    shapes = output_shapes(module, names, example)
    for name, shape in shapes.items():
        if len(shape) != 3:
            size = "x".join(map(str, shape)) or "a scalar"
            raise ConvsightError(
                f"layer '{name}' outputs {size} per input, not C x H x W maps{why}"
            )
    return shapes


def conv_layer_names(module: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in the model."""
    require_hookable(module)
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


# What ``--layers all`` takes: convolutions, the activations after them and pooling.
MAP_LAYER_TYPES = (
    nn.Conv2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def map_layer_names(module: nn.Module, example: torch.Tensor) -> list[str]:
    """Every convolution, activation and pooling layer whose output on ``example`` is a
    channel map (N x C x H x W), in the order of ``named_modules``."""
    require_hookable(module)
    names = [n for n, m in module.named_modules() if n and isinstance(m, MAP_LAYER_TYPES)]
    with capture(module, names) as outputs, torch.no_grad():
        module(example)
    return [n for n in names if n in outputs and outputs[n].dim() == 4]


# Layers that compute nothing (their output is their input in eval mode), and the adaptive
# pooling that brings a map to the size a head needs: neither gives a stage's output, nor does
# a block whose output is that pooling's.
_PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Identity, nn.modules.dropout._DropoutNd)
_HEAD_POOLING: tuple[type[nn.Module], ...] = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _map_outputs(
    module: nn.Module, example: torch.Tensor
) -> list[tuple[str, tuple[int, ...] | None, tuple[int, ...]]]:
    """(name, input H x W or None, output C x H x W) of each layer call that gives an
    N x C x H x W output (not a pass-through's or head pooling's), in the order the calls
    finish (one forward, hooks removed)."""
    found: list[tuple[str, tuple[int, ...] | None, tuple[int, ...]]] = []
    pooled: list[torch.Tensor] = []  # head pooling outputs (kept, so identity checks hold)

    def make_hook(name: str, layer: nn.Module):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                return
            if isinstance(layer, _HEAD_POOLING):
                pooled.append(output)
            elif not isinstance(layer, _PASS_THROUGH) and all(output is not p for p in pooled):
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                size = tuple(first.shape[-2:]) if first is not None and first.dim() == 4 else None
                found.append((name, size, tuple(output.shape[1:])))

        return hook

    layers = [(n, m) for n, m in module.named_modules() if n]
    handles = [m.register_forward_hook(make_hook(n, m)) for n, m in layers]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return found


def last_map_layer(module: nn.Module, example: torch.Tensor) -> tuple[str, tuple[int, ...]] | None:
    """(name, C x H x W) of the last stage's output on ``example``: the last layer to finish
    with a spatial output (N x C x H x W, H x W > 1 where any layer has one) before the head
    pools or flattens it, outermost where several give it (ResNet's ``layer4``, not
    ``layer4.1.relu``: a block finishes after its branches). None when no layer gives maps.

    Not stages: pass-through layers, adaptive pooling (and a block that ends with it), a
    layer called more than once (its name is not one output) and a layer inside a block that
    reduces the resolution it took (a head that pools; MobileNet's expansion conv ahead of a
    stride-2 one at 1 x 1)."""
    require_hookable(module)
    found = _map_outputs(module, example)
    calls = Counter(name for name, _, _ in found)
    found = [item for item in found if calls[item[0]] == 1]  # a shared layer names no one map
    last = {name: (size, shape[1:]) for name, size, shape in found}

    def inside_reduction(name: str, hw: tuple[int, ...]) -> bool:
        parents = [name[:i] for i, ch in enumerate(name) if ch == "."]
        return any(p in last and last[p][0] == hw and last[p][1] != hw for p in parents)

    spatial = [
        (name, shape)
        for name, _, shape in found
        if shape[1] * shape[2] > 1 and not inside_reduction(name, shape[1:])
    ]
    chosen = spatial or [(name, shape) for name, _, shape in found]
    return chosen[-1] if chosen else None


class _StopForward(Exception):
    """Raised by a hook once every wanted layer has run: nothing after it is computed."""


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"layer output of type {type(output).__name__} is not a tensor")


@contextmanager
def capture(
    module: nn.Module,
    names: Sequence[str],
    stop: bool = False,
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Record the outputs of the named layers during forward passes inside the block.

    With ``stop=True`` the forward pass is cut short once every named layer has produced
    its output (use :func:`forward_to`). With ``reduce``, what ``reduce(name, output)``
    returns is kept instead of the output, computed the moment the layer has run (before a
    later in-place operation can change the output). Hooks are removed on exit, also on
    exceptions.
    """
    if names:
        require_hookable(module)
    outputs: dict[str, torch.Tensor] = {}
    wanted = set(names)
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            value = _first_tensor(output)
            outputs[name] = value if reduce is None else reduce(name, value)
            if stop and wanted.issubset(outputs):
                raise _StopForward

        return hook

    try:
        for name in dict.fromkeys(names):
            handles.append(get_layer(module, name).register_forward_hook(make_hook(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def forward_to(
    module: nn.Module,
    x: torch.Tensor,
    names: Sequence[str],
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Run ``module`` on ``x`` only as far as the last of ``names``; return their outputs
    (or what ``reduce(name, output)`` made of each, as :func:`capture` keeps it).

    Layers after the last needed one never run (a truncated forward). Gradients flow
    through the returned tensors as usual.
    """
    with capture(module, names, stop=True, reduce=reduce) as outputs:
        try:
            module(x)
        except _StopForward:
            pass
    missing = [n for n in names if n not in outputs]
    if missing:
        raise UnknownLayerError(
            f"layer(s) {', '.join(missing)} did not run in the forward pass "
            "(a module that is defined but never called cannot be addressed)"
        )
    return {n: outputs[n] for n in names}


@dataclass(frozen=True)
class LayerInfo:
    """One row of ``convsight layers``: name, module type, output shape for one input."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    parameters: int


def describe_layers(module: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Name, type and output shape (batch dimension dropped) of every layer for ``example``."""
    require_hookable(module)
    names = layer_names(module)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            try:
                shapes[name] = tuple(_first_tensor(output).shape[1:])
            except TypeError:
                pass

        return hook

    modules = dict(module.named_modules())
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerInfo(
            name=name,
            type=type(modules[name]).__name__,
            output_shape=shapes.get(name),
            parameters=sum(p.numel() for p in modules[name].parameters(recurse=False)),
        )
        for name in names
    ]
