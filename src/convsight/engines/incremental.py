"""Incremental inference: re-run only the part of each feature map that an occlusion changes.

An occluding window changes a small box of the input; through a convolution that box grows by
the kernel and shrinks by the stride, so in the early (expensive, high-resolution) layers most
of each occluded image's activations equal the clean image's. Following Krypton (Nakandala,
Kumar and Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based
Deep CNN Explanations", SIGMOD 2019; https://adalabucsd.github.io/research-blog/research/2019/
06/07/krypton.html), the network runs once on the clean image, keeping every activation; then
each occluded image carries only its changed box ("patch") through convolutions, pools and
element-wise layers, reading the unchanged surroundings from the clean activations. Once the
box covers most of a map, or a layer is not spatially local (global pooling, flatten, linear),
the patch is pasted into the clean map and the rest runs as usual. Exact, not approximate: the
same numbers as the full forward pass up to float rounding.

Works on any network ``torch.fx`` can trace (torchvision's classifiers can); batch norm is folded
into the convolution before it.
"""

from __future__ import annotations

import copy
import math
import operator
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from convsight.layers import ELEMENTWISE_LAYERS

# Layers that act on each position alone (in eval mode): the patch passes through unchanged.
POINTWISE_MODULES = ELEMENTWISE_LAYERS
POINTWISE_FUNCTIONS = {F.relu, F.relu6, torch.relu, torch.sigmoid, torch.tanh, F.silu, F.hardswish}
BINARY_FUNCTIONS = {operator.add, torch.add, operator.mul, torch.mul}


@dataclass
class Patch:
    """Rows of a batch that equal ``clean`` (one image's map) except in one box each.

    ``values`` (N x C x h x w) is row i's box, whose top-left corner is (``top[i]``,
    ``left[i]``); the box has the same size in every row.
    """

    clean: torch.Tensor  # 1 x C x H x W
    values: torch.Tensor
    top: torch.Tensor  # N, long
    left: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return self.values.shape[-2], self.values.shape[-1]


def flat_map(x: torch.Tensor, pad: tuple[int, int] = (0, 0), fill: float = 0.0) -> torch.Tensor:
    """A 1 x C x H x W map, padded by ``pad`` (rows, columns), as (H' x W') x C pixel rows."""
    if pad != (0, 0):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]), value=fill)
    return x[0].permute(1, 2, 0).reshape(-1, x.shape[1])


def _gather(
    flat: torch.Tensor,
    width: int,
    patch: Patch | None,
    top: torch.Tensor,
    left: torch.Tensor,
    h: int,
    w: int,
    shift: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Boxes (N x C x h x w, channels-last) at (top, left) of a map given as pixel rows
    (:func:`flat_map`, ``width`` pixels a row), with each row's patch values where they fall
    in its box. ``shift`` moves the patch into the map's coordinates (its padding)."""
    n, c = top.shape[0], flat.shape[1]
    rows = top[:, None] + torch.arange(h, device=top.device)  # N x h
    cols = left[:, None] + torch.arange(w, device=top.device)
    boxes = flat.index_select(0, (rows[:, :, None] * width + cols[:, None, :]).reshape(-1))
    if patch is not None:
        ph, pw = patch.size
        pr = rows - (patch.top[:, None] + shift[0])
        pc = cols - (patch.left[:, None] + shift[1])
        inside = ((pr >= 0) & (pr < ph))[:, :, None] & ((pc >= 0) & (pc < pw))[:, None, :]
        row = (
            torch.arange(n, device=top.device)[:, None, None] * ph + pr.clamp(0, ph - 1)[:, :, None]
        )
        source = (row * pw + pc.clamp(0, pw - 1)[:, None, :]).reshape(-1)
        where = inside.reshape(-1).nonzero().squeeze(1)
        values = patch.values.permute(0, 2, 3, 1).reshape(-1, c)
        boxes.index_copy_(0, where, values.index_select(0, source.index_select(0, where)))
    return boxes.view(n, h, w, c).permute(0, 3, 1, 2)


def materialize(patch: Patch, flat: torch.Tensor | None = None) -> torch.Tensor:
    """The whole maps (N x C x H x W): the clean map with each row's box pasted in, in the
    clean map's memory layout (code after it may ``view`` them as the network would)."""
    h, w = patch.clean.shape[-2:]
    zero = torch.zeros_like(patch.top)
    flat = flat_map(patch.clean) if flat is None else flat
    maps = _gather(flat, w, patch, zero, zero, h, w)
    clean = patch.clean
    channels_last = clean.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not clean.is_contiguous():
        return maps.contiguous(memory_format=torch.channels_last)
    return maps.contiguous()


def _out_range(start: torch.Tensor, length: int, k: int, s: int, p: int, d: int, size: int):
    """Output positions (first, last) whose receptive field meets input rows start..+length."""
    span = d * (k - 1)
    out = (size + 2 * p - span - 1) // s + 1
    first = torch.div(start + p - span + s - 1, s, rounding_mode="floor").clamp(min=0)
    last = torch.div(start + length - 1 + p, s, rounding_mode="floor").clamp(max=out - 1)
    return first, last, out


def _fit(first: torch.Tensor, last: torch.Tensor, out: int) -> tuple[torch.Tensor, int]:
    """One box length for every row (the longest) and each row's start, kept inside the map."""
    length = int((last - first + 1).max())
    return first.clamp(max=out - length).clamp(min=0), min(length, out)


class IncrementalNet:
    """The network as a ``torch.fx`` graph that carries patches where it can.

    ``dense_fraction``: once a box covers this fraction of its map, the patch is pasted in and
    the rest of the network runs on whole maps.
    """

    def __init__(self, module: nn.Module, dense_fraction: float = 0.5) -> None:
        from torch.fx.experimental.optimization import fuse

        module = copy.deepcopy(module).eval()
        for layer in module.modules():  # clean activations are kept: nothing may overwrite them
            if getattr(layer, "inplace", False):
                # torch types Module.__setattr__'s value as Tensor | Module; any value may be set
                layer.inplace = False  # type: ignore[assignment]
        fused = fuse(fx.symbolic_trace(module))  # folds batch norm into the conv before it
        assert isinstance(fused, fx.GraphModule)  # fuse returns a new graph module
        self.graph_module = fused
        self.modules = dict(self.graph_module.named_modules())
        self.dense_fraction = dense_fraction
        self._tails: dict[tuple, tuple | None] = {}
        self._flats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.tail_seconds = 0.0  # time in the frozen whole-map tail (where the time goes)

    # -- one clean pass, keeping every node's value -------------------------------------
    def clean_values(self, x: torch.Tensor) -> dict[fx.Node, object]:
        """Every node's value for the clean input ``x`` (1 x C x H x W), the output included."""
        self._flats.clear()
        values: dict[fx.Node, Any] = {}  # any value (map_arg takes it as an fx Argument)
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                values[node] = x
            elif node.op == "output":
                values[node] = fx.node.map_arg(node.args[0], lambda n: values[n])
            else:
                values[node] = self._run(node, values)
        return values

    def _flat(self, clean: torch.Tensor, pad: tuple[int, int] = (0, 0), fill: float = 0.0):
        """:func:`flat_map` of a clean activation, kept until the next clean image."""
        key = (id(clean), pad, fill)
        cached = self._flats.get(key)
        if cached is None or cached[0] is not clean:
            cached = (clean, flat_map(clean, pad, fill))
            self._flats[key] = cached
        return cached[1]

    def _dense(self, value: object) -> object:
        if isinstance(value, Patch):
            return materialize(value, self._flat(value.clean))
        return value

    def clean_output(self, clean: dict[fx.Node, object]) -> torch.Tensor:
        output = next(n for n in self.graph_module.graph.nodes if n.op == "output")
        return clean[output]  # type: ignore[return-value]

    def _run(self, node: fx.Node, values: dict) -> object:
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: values[n]))
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        if node.op == "call_module":
            return self.modules[_name(node)](*args, **kwargs)
        if node.op == "call_function":
            return _function(node)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], _name(node))(*args[1:], **kwargs)
        if node.op == "get_attr":
            target: object = self.graph_module
            for part in _name(node).split("."):
                target = getattr(target, part)
            return target
        raise RuntimeError(f"unsupported node {node.op}")

    # -- the occluded rows --------------------------------------------------------------
    def forward(self, clean: dict[fx.Node, object], patch: Patch) -> torch.Tensor:
        """Outputs of the occluded rows: ``patch`` is their change of the (normalized) input.

        The first call for a patch size finds where the boxes give way to whole maps; the part
        after that (the "tail") then runs as one traced, frozen module on later calls.
        """
        key = (tuple(patch.values.shape[1:]), tuple(patch.clean.shape))
        if key not in self._tails:
            values, dense = self._interpret(clean, patch, skip=set())
            self._tails[key] = self._freeze_tail(dense, values)
            return self._output(values)
        tail = self._tails[key]
        if tail is None:
            return self._output(self._interpret(clean, patch, skip=set())[0])
        nodes, frontier, frozen = tail
        values, _ = self._interpret(clean, patch, skip=nodes)
        inputs = [self._dense(values[n]) for n in frontier]
        began = time.perf_counter()
        out = frozen(*inputs)
        self.tail_seconds += time.perf_counter() - began
        return out

    def _interpret(self, clean: dict, patch: Patch, skip: set) -> tuple[dict, list[fx.Node]]:
        """Run every node not in ``skip``; return the values and the nodes run on whole maps
        that depend on the occluded input."""
        values: dict[fx.Node, object] = {}
        dense: list[fx.Node] = []
        tainted: set[fx.Node] = set()
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                values[node] = patch
                tainted.add(node)
            elif node.op == "output" or node in skip:
                continue
            else:
                values[node] = self._step(node, values, clean[node])
                if any(n in tainted for n in node.all_input_nodes):
                    tainted.add(node)
                    if not isinstance(values[node], Patch):
                        dense.append(node)
        return values, dense

    def _output(self, values: dict) -> torch.Tensor:
        output = next(n for n in self.graph_module.graph.nodes if n.op == "output")
        result = self._dense(fx.node.map_arg(output.args[0], lambda n: values[n]))
        if not isinstance(result, torch.Tensor):
            raise RuntimeError("incremental inference needs a network with one tensor output")
        return result

    def _freeze_tail(self, dense: list[fx.Node], values: dict) -> tuple | None:
        """The dense nodes as one traced, frozen module of the values they read (the
        "frontier"), checked against the interpreted run; None if that is not possible."""
        output = next(n for n in self.graph_module.graph.nodes if n.op == "output")
        if not dense or any(n not in dense for n in output.all_input_nodes):
            return None
        members = set(dense)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        frontier: list[fx.Node] = []
        for node in dense:
            for source in node.all_input_nodes:
                if source not in members and source not in env:
                    env[source] = graph.placeholder(f"in_{source.name}")
                    frontier.append(source)
            env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(fx.node.map_arg(output.args[0], lambda n: env[n]))
        inputs = [self._dense(values[n]) for n in frontier]
        if not all(isinstance(v, torch.Tensor) for v in inputs):
            return None
        try:
            module = fx.GraphModule(self.graph_module, graph)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                expected, got = self._output(values), frozen(*inputs)
        except Exception:  # noqa: BLE001 - anything untraceable: interpret it as it is
            return None
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
            return None
        return members, frontier, frozen

    def _step(self, node: fx.Node, values: dict, clean: object) -> object:
        inputs = [values[n] for n in node.all_input_nodes]
        patches = [v for v in inputs if isinstance(v, Patch)]
        if not patches:
            return self._run(node, values)
        if isinstance(clean, torch.Tensor) and clean.dim() == 4:
            local = self._local(node, values, clean)
            if local is not None:
                return local
        for n in node.all_input_nodes:  # paste the boxes in, once, for every later user too
            if isinstance(values[n], Patch):
                values[n] = self._dense(values[n])
        return self._run(node, values)

    def _local(self, node: fx.Node, values: dict, clean: torch.Tensor) -> Patch | None:
        """The node's output as a patch, or None when it must run on whole maps."""
        module = self.modules.get(node.target) if node.op == "call_module" else None
        first = (
            values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        )
        if module is not None and isinstance(first, Patch):
            if isinstance(module, POINTWISE_MODULES) and not node.kwargs and len(node.args) == 1:
                return Patch(clean, module(first.values), first.top, first.left)
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                return self._window(module, first, clean)
        if node.op == "call_function" and isinstance(first, Patch):
            if node.target in POINTWISE_FUNCTIONS and len(node.args) == 1:
                kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
                return Patch(clean, node.target(first.values, **kwargs), first.top, first.left)
            if node.target in BINARY_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
                return self._binary(node, values, clean)
        return None

    def _window(
        self, module: nn.Conv2d | nn.MaxPool2d, patch: Patch, clean: torch.Tensor
    ) -> Patch | None:
        """A convolution or max-pool on the boxes, their surroundings read from the clean map."""
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                return None
            k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        else:
            if module.ceil_mode:
                return None
            k, s, p, d = (
                _two(v)
                for v in (module.kernel_size, module.stride, module.padding, module.dilation)
            )
        if isinstance(module, nn.Conv2d) and k == (1, 1) and s == (1, 1) and p == (0, 0):
            # a 1x1 convolution maps each box onto itself: no surroundings needed
            return Patch(clean, module(patch.values), patch.top, patch.left)
        size = patch.clean.shape[-2:]
        (h, w) = patch.size
        rows = _out_range(patch.top, h, k[0], s[0], p[0], d[0], size[0])
        cols = _out_range(patch.left, w, k[1], s[1], p[1], d[1], size[1])
        top, oh = _fit(*rows)
        left, ow = _fit(*cols)
        if oh * ow >= self.dense_fraction * rows[2] * cols[2]:
            return None
        fill = 0.0 if isinstance(module, nn.Conv2d) else -math.inf
        flat = self._flat(patch.clean, (p[0], p[1]), fill)
        ih, iw = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1, (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1
        width = size[1] + 2 * p[1]
        boxes = _gather(flat, width, patch, top * s[0], left * s[1], ih, iw, shift=(p[0], p[1]))
        if isinstance(module, nn.Conv2d):
            out = F.conv2d(boxes, module.weight, module.bias, s, 0, d, module.groups)
        else:
            out = F.max_pool2d(boxes, k, s, 0, d)
        return Patch(clean, out, top, left)

    def _binary(self, node: fx.Node, values: dict, clean: torch.Tensor) -> Patch | None:
        a, b = (values[n] if isinstance(n, fx.Node) else n for n in node.args)
        if isinstance(a, Patch) and isinstance(b, Patch):
            (ha, wa), (hb, wb) = a.size, b.size
            size = clean.shape[-2:]
            top, h = _fit(
                torch.minimum(a.top, b.top), torch.maximum(a.top + ha, b.top + hb) - 1, size[0]
            )
            left, w = _fit(
                torch.minimum(a.left, b.left), torch.maximum(a.left + wa, b.left + wb) - 1, size[1]
            )
            if h * w >= self.dense_fraction * size[0] * size[1]:
                return None
            va = _gather(self._flat(a.clean), size[1], a, top, left, h, w)
            vb = _gather(self._flat(b.clean), size[1], b, top, left, h, w)
            return Patch(clean, _function(node)(va, vb), top, left)
        if isinstance(a, Patch) and isinstance(b, (int, float)):
            return Patch(clean, _function(node)(a.values, b), a.top, a.left)
        if isinstance(b, Patch) and isinstance(a, (int, float)):
            return Patch(clean, _function(node)(a, b.values), b.top, b.left)
        return None


def _function(node: fx.Node) -> Callable[..., Any]:
    """The function a ``call_function`` node calls."""
    assert callable(node.target)
    return node.target


def _name(node: fx.Node) -> str:
    """The name a ``call_module``, ``call_method`` or ``get_attr`` node refers to."""
    assert isinstance(node.target, str)
    return node.target


def _two(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
