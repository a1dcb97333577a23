"""One converter per Keras layer type: a Keras layer to the PyTorch module computing it.

Feature maps are channels-first (N x C x H x W); Keras's channels-last axes, 'same' padding
and pooling are translated so each module outputs what its Keras layer outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convsight.errors import ConvsightError


def _array(variable: Any) -> torch.Tensor:
    """A Keras variable as a float32 CPU tensor."""
    import keras

    return torch.from_numpy(np.array(keras.ops.convert_to_numpy(variable), dtype=np.float32))


def _torch_axis(axis: int, rank: int, layer: Any) -> int:
    """The PyTorch axis of Keras axis ``axis`` of a rank-``rank`` tensor (NHWC -> NCHW)."""
    if axis < 0:
        axis += rank
    if axis <= 0 or axis >= rank:
        raise ConvsightError(
            f"Keras layer '{layer.name}' acts on axis {axis} of a rank-{rank} input"
        )
    return {1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def _activation(keras: Any, function: Any, layer: Any) -> nn.Module | None:
    """The PyTorch module of a Keras activation function (None for linear)."""
    name = getattr(function, "__name__", "")
    if getattr(keras.activations, name, None) is not function:
        raise ConvsightError(
            f"Keras layer '{layer.name}' uses the activation {name or function!r}, which is not "
            "a built-in Keras activation convsight can rebuild"
        )
    modules: dict[str, Callable[[], nn.Module | None]] = {
        "linear": lambda: None,
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softmax": lambda: nn.Softmax(dim=1),  # axis -1: the channels, in both layouts
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "hard_sigmoid": nn.Hardsigmoid,
        "hard_silu": nn.Hardswish,
        "hard_swish": nn.Hardswish,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "mish": nn.Mish,
    }
    if name not in modules:
        raise ConvsightError(
            f"Keras layer '{layer.name}' uses the activation '{name}', which convsight cannot "
            "rebuild in PyTorch"
        )
    return modules[name]()


def _with_activation(keras: Any, layer: Any, op_name: str, op: nn.Module) -> nn.Module:
    """``op`` alone, or ``op`` then the layer's activation as one ``nn.Sequential``."""
    activation = _activation(keras, layer.activation, layer)
    if activation is None:
        return op
    return nn.Sequential(OrderedDict([(op_name, op), ("activation", activation)]))


def _same_padding(length: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Keras's 'same' padding (before, after) of one dimension (its torch backend's rule)."""
    effective = (kernel - 1) * dilation + 1
    if stride == 1:
        total = effective - 1
    else:
        total = max(0, ((length + stride - 1) // stride - 1) * stride + effective - length)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Keras's 'same' padding for a kernel/stride, worked out for each input size."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
        mode: str = "constant",
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation, self.mode = kernel, stride, dilation, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[2], self.kernel[0], self.stride[0], self.dilation[0])
        left, right = _same_padding(x.shape[3], self.kernel[1], self.stride[1], self.dilation[1])
        return F.pad(x, (left, right, top, bottom), mode=self.mode)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, mode={self.mode}"


def _static_same(
    kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)
) -> tuple[int, int] | None:
    """The symmetric padding 'same' always means here (stride 1, odd kernel), else None."""
    pads = []
    for k, s, d in zip(kernel, stride, dilation, strict=True):
        total = (k - 1) * d
        if s != 1 or total % 2:
            return None
        pads.append(total // 2)
    return pads[0], pads[1]


def _channels_last(layer: Any) -> None:
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format not in (None, "channels_last"):
        raise ConvsightError(
            f"Keras layer '{layer.name}' is {data_format}; convsight reads channels-last models"
        )


def _conv2d(keras: Any, layer: Any, shapes: list[tuple], depthwise: bool = False) -> nn.Module:
    _channels_last(layer)
    kernel = _array(layer.kernel)  # kh, kw, in/groups, out (depthwise: kh, kw, in, multiplier)
    kh, kw, k_in, k_out = kernel.shape
    stride = tuple(layer.strides)
    dilation = tuple(layer.dilation_rate)
    if depthwise:
        in_channels, out_channels, groups = k_in, k_in * k_out, k_in
        weight = kernel.permute(2, 3, 0, 1).reshape(k_in * k_out, 1, kh, kw)
    else:
        groups = getattr(layer, "groups", 1)
        in_channels, out_channels = k_in * groups, k_out
        weight = kernel.permute(3, 2, 0, 1)
    padding: tuple[int, int] = (0, 0)
    pad = None
    if layer.padding == "same":
        static = _static_same((kh, kw), stride, dilation)
        if static is None:
            pad = SamePad2d((kh, kw), stride, dilation)
        else:
            padding = static
    elif layer.padding != "valid":
        raise ConvsightError(f"Keras layer '{layer.name}' has padding '{layer.padding}'")
    bias = getattr(layer, "bias", None)
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        (kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            assert conv.bias is not None  # made with a bias just above
            conv.bias.copy_(_array(bias))
    if pad is None:
        return _with_activation(keras, layer, "conv", conv)
    activation = _activation(keras, layer.activation, layer)
    parts = [("pad", pad), ("conv", conv)] + ([("activation", activation)] if activation else [])
    return nn.Sequential(OrderedDict(parts))


def _dense(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    if len(shapes[0]) != 2:
        raise ConvsightError(
            f"Keras layer '{layer.name}' is a Dense layer on a rank-{len(shapes[0])} input; "
            "convsight rebuilds Dense layers on flat (N x features) inputs"
        )
    kernel = _array(layer.kernel)
    bias = getattr(layer, "bias", None)
    linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(kernel.T)
        if bias is not None:
            linear.bias.copy_(_array(bias))
    return _with_activation(keras, layer, "linear", linear)


class KerasAvgPool2d(nn.Module):
    """Keras's 'same' average pooling as its torch backend computes it.

    Symmetric padding is left out of each window's count; asymmetric padding repeats the
    edge values (and counts them).
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (
            _same_padding(x.shape[2 + i], self.kernel[i], self.stride[i]) for i in (0, 1)
        )
        if top == bottom and left == right:
            return F.avg_pool2d(
                x, self.kernel, self.stride, padding=(top, left), count_include_pad=False
            )
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
        return F.avg_pool2d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=same"


def _pool2d(keras: Any, layer: Any, shapes: list[tuple], kind: str) -> nn.Module:
    _channels_last(layer)
    kernel = tuple(layer.pool_size)
    stride = tuple(layer.strides) if layer.strides is not None else kernel
    padding = layer.padding
    pool_class = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
    if padding == "valid":
        return pool_class(kernel, stride)
    if padding != "same":
        raise ConvsightError(f"Keras layer '{layer.name}' has padding '{padding}'")
    static = _static_same(kernel, stride)
    if kind == "max":
        if static is not None:
            return nn.MaxPool2d(kernel, stride, padding=static)
        # Repeating the edge value never changes a maximum: the same as padding with -inf.
        pad = SamePad2d(kernel, stride, mode="replicate")
        return nn.Sequential(OrderedDict(pad=pad, pool=nn.MaxPool2d(kernel, stride)))
    if static is not None:
        return nn.AvgPool2d(kernel, stride, padding=static, count_include_pad=False)
    return KerasAvgPool2d(kernel, stride)


class GlobalPool2d(nn.Module):
    """Keras's global average/max pooling: N x C x H x W to N x C (or N x C x 1 x 1)."""

    def __init__(self, kind: str, keepdims: bool) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return x.amax(dim=(2, 3), keepdim=self.keepdims)
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, keepdims={self.keepdims}"


class KerasFlatten(nn.Module):
    """Keras's Flatten: N x C x H x W maps flattened in Keras's (H, W, C) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)


class Merge(nn.Module):
    """Keras's merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate."""

    def __init__(self, kind: str, dim: int = 1) -> None:
        super().__init__()
        self.kind, self.dim = kind, dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "concatenate":
            return torch.cat(inputs, dim=self.dim)
        if self.kind == "subtract":
            return inputs[0] - inputs[1]
        out = inputs[0]
        for x in inputs[1:]:
            if self.kind in ("add", "average"):
                out = out + x
            elif self.kind == "multiply":
                out = out * x
            elif self.kind == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(inputs) if self.kind == "average" else out

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", dim={self.dim}" if self.kind == "concatenate" else "")


class Affine(nn.Module):
    """``x * scale + offset`` per channel (Keras's Rescaling and Normalization layers)."""

    scale: torch.Tensor  # buffers
    offset: torch.Tensor

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor, rank: int) -> None:
        super().__init__()
        shape = (1, -1, 1, 1) if rank == 4 else (1, -1)
        self.register_buffer("scale", scale.reshape(shape) if scale.numel() > 1 else scale)
        self.register_buffer("offset", offset.reshape(shape) if offset.numel() > 1 else offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


def _batch_norm(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    rank = len(shapes[0])
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1 or _torch_axis(axes[0], rank, layer) != 1 or rank not in (2, 4):
        raise ConvsightError(
            f"Keras layer '{layer.name}' normalizes axis {layer.axis} of a rank-{rank} input; "
            "convsight rebuilds batch norm over the channels only"
        )
    mean, variance = _array(layer.moving_mean), _array(layer.moving_variance)
    channels = mean.numel()
    norm = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(channels, eps=layer.epsilon)
    assert norm.running_mean is not None and norm.running_var is not None  # tracked stats
    with torch.no_grad():
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)
        norm.weight.copy_(_array(layer.gamma) if layer.gamma is not None else torch.ones(channels))
        norm.bias.copy_(_array(layer.beta) if layer.beta is not None else torch.zeros(channels))
    return norm


def _relu_layer(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    max_value, slope = layer.max_value, float(layer.negative_slope or 0.0)
    if float(layer.threshold or 0.0) == 0.0:
        if max_value is None:
            return nn.LeakyReLU(slope) if slope else nn.ReLU()
        if not slope:
            return nn.ReLU6() if float(max_value) == 6.0 else nn.Hardtanh(0.0, float(max_value))
    raise ConvsightError(
        f"Keras layer '{layer.name}' is a ReLU with a threshold or a capped leaky slope, which "
        "convsight cannot rebuild"
    )


def _softmax_layer(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1:
        raise ConvsightError(f"Keras layer '{layer.name}' is a softmax over several axes")
    return nn.Softmax(dim=_torch_axis(axes[0], len(shapes[0]), layer))


def _rescaling(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    scale = torch.as_tensor(np.asarray(layer.scale, dtype=np.float32))
    offset = torch.as_tensor(np.asarray(layer.offset, dtype=np.float32))
    return Affine(scale, offset, len(shapes[0]))


def _zero_padding(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
    _channels_last(layer)
    (top, bottom), (left, right) = layer.padding
    return nn.ZeroPad2d((left, right, top, bottom))


def _merge(kind: str) -> Callable[[Any, Any, list[tuple]], nn.Module]:
    def convert(keras: Any, layer: Any, shapes: list[tuple]) -> nn.Module:
        if kind == "concatenate":
            return Merge(kind, _torch_axis(layer.axis, len(shapes[0]), layer))
        return Merge(kind)

    return convert


CONVERTERS: dict[str, Callable[[Any, Any, list[tuple]], nn.Module]] = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": lambda k, layer, s: _conv2d(k, layer, s, depthwise=True),
    "Dense": _dense,
    "MaxPooling2D": lambda k, layer, s: _pool2d(k, layer, s, "max"),
    "AveragePooling2D": lambda k, layer, s: _pool2d(k, layer, s, "average"),
    "GlobalAveragePooling2D": lambda k, layer, s: GlobalPool2d("average", layer.keepdims),
    "GlobalMaxPooling2D": lambda k, layer, s: GlobalPool2d("max", layer.keepdims),
    "Flatten": lambda k, layer, s: KerasFlatten(),
    "Dropout": lambda k, layer, s: nn.Dropout(layer.rate),
    "SpatialDropout2D": lambda k, layer, s: nn.Dropout2d(layer.rate),
    "GaussianNoise": lambda k, layer, s: nn.Identity(),
    "GaussianDropout": lambda k, layer, s: nn.Identity(),
    "AlphaDropout": lambda k, layer, s: nn.Identity(),
    "ActivityRegularization": lambda k, layer, s: nn.Identity(),
    "BatchNormalization": _batch_norm,
    "Activation": lambda k, layer, s: _activation(k, layer.activation, layer) or nn.Identity(),
    "ReLU": _relu_layer,
    "LeakyReLU": lambda k, layer, s: nn.LeakyReLU(float(layer.negative_slope)),
    "ELU": lambda k, layer, s: nn.ELU(float(layer.alpha)),
    "Softmax": _softmax_layer,
    "Rescaling": _rescaling,
    "ZeroPadding2D": _zero_padding,
    "Add": _merge("add"),
    "Subtract": _merge("subtract"),
    "Multiply": _merge("multiply"),
    "Average": _merge("average"),
    "Maximum": _merge("maximum"),
    "Minimum": _merge("minimum"),
    "Concatenate": _merge("concatenate"),
}


def convert_layer(keras: Any, layer: Any, shapes: list[tuple], path: Path) -> nn.Module:
    """The PyTorch module of one Keras layer, or one sentence naming what is not supported."""
    kind = type(layer).__name__
    module_name = type(layer).__module__
    if kind not in CONVERTERS or not module_name.startswith("keras."):
        raise ConvsightError(
            f"Keras file {path}: layer '{layer.name}' is a {kind}, which convsight cannot "
            f"rebuild in PyTorch (it reads {', '.join(sorted(CONVERTERS))})"
        )
    return CONVERTERS[kind](keras, layer, shapes)
