"""``.onnx`` files: converted to PyTorch with onnx2torch, then checked once against onnxruntime.

Layers are the converted modules, named after the ONNX nodes (``node_conv2d``, ``conv1/Conv``).

Before conversion the graph is brought into the form onnx2torch covers, each step exact:

* opsets above 17 (``torch.onnx.export`` writes 20 by default, with either exporter) are
  converted down to opset 17 with ``onnx.version_converter``: onnx2torch 1.5 has no
  converters for the opset-19/21 versions of ``Shape``, ``Reshape``, ``Constant``,
  ``Identity`` or for ``ReduceMean``-18, which differ from their opset-17 forms only in the
  types they accept (and, for the reductions, axes given as an input). Two ops the converter
  cannot take down are rewritten first: ``Split``-18 as one ``Slice`` per output, and
  ``Gelu`` (opset 20) as its Erf (or Tanh) formula;
* ``Reshape(allowzero=1)`` (the dynamo exporter's form) becomes ``allowzero=0`` when its shape
  holds no 0 (then the two mean the same);
* ``Identity`` nodes that copy a weight (the TorchScript exporter shares equal weights that way)
  are replaced by the weight itself, as onnx2torch wants conv weights as initializers;
* a graph exported with a fixed batch size keeps its batch free: a constant ``Reshape`` target
  whose first entry is that batch size, applied to a tensor that carries the batch, copies the
  batch dimension instead (``0``), so the model runs on any number of images.

The converted model is then run next to onnxruntime on the file as given (a seeded probe batch,
plus one image and two batches at once for a fixed-batch file); the largest absolute difference
and the tolerance are kept in ``model.card.arch_options`` (``onnxruntime_max_abs_diff``,
``onnxruntime_tolerance``) and in ``model.card.source``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.models.converted import checked_model, converted_card
from convsight.models.model import Model
from convsight.paths import require_file

TARGET_OPSET = 17
"""The opset a newer graph is converted down to before onnx2torch reads it."""
TOLERANCE = 1e-4
"""Largest allowed |torch - onnxruntime|, relative to max(1, the largest output magnitude)."""
PROBE_SEED = 0
MAX_FILE_BYTES = 2 * 1024**3  # protobuf's own limit; larger models use external data


def _modules() -> tuple[Any, Any, Any]:
    """onnx, onnx2torch and onnxruntime (an ImportError names the one missing: the caller
    turns it into the sentence about the ``convsight[onnx]`` extra)."""
    import onnx
    import onnx2torch
    import onnxruntime

    return onnx, onnx2torch, onnxruntime


def load_onnx(path: Path, card: ModelCard | None) -> Model:
    """A Model from an ``.onnx`` file, its card built from the graph when ``card`` is None.

    Without a card the input must have fixed channels, height and width; mean/std are then
    the identity (0 and 1: the caller warns). The converted module is checked against
    onnxruntime on a probe batch and refused when it differs by more than the tolerance.
    """
    onnx, onnx2torch, _ = _modules()
    path = require_file(path, "ONNX file")
    proto = _read(onnx, path)
    graph_input, graph_output = _signature(proto, path)
    batch, channels, height, width = _dims(graph_input)
    if channels is None:
        raise ConvsightError(
            f"ONNX file {path} takes an input with a variable number of channels; "
            "convsight needs a fixed one"
        )
    card = _card(path, card, channels, (height, width), graph_output)
    prepared = _prepare(onnx, proto, path, batch)
    module = _convert(onnx2torch, prepared, path)
    difference, tolerance = _check_against_onnxruntime(path, module, card, batch)
    return checked_model(module, card, "ONNX", path, "onnxruntime", difference, tolerance)


def _read(onnx: Any, path: Path) -> Any:
    """The checked ModelProto of ``path`` (external data beside it is read too)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConvsightError(
                f"ONNX file {path} is larger than 2 GiB; save its weights as external data"
            )
        proto = onnx.load(str(path))
    except ConvsightError:
        raise
    except PermissionError as exc:
        raise ConvsightError(f"cannot read ONNX file {path}: permission denied") from exc
    except Exception as exc:
        raise ConvsightError(
            f"cannot read ONNX file {path}: it is not an ONNX model ({_first_line(exc)})"
        ) from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConvsightError(
            f"ONNX file {path} is not a valid ONNX model: {_first_line(exc)}"
        ) from exc
    if not len(proto.graph.node):
        raise ConvsightError(f"ONNX file {path} holds no graph nodes")
    return proto


def _signature(proto: Any, path: Path) -> tuple[Any, Any]:
    """The one image input and the one output of the graph, else one sentence."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ConvsightError(
            f"ONNX file {path} takes {len(inputs)} inputs; convsight needs a model with one "
            "image input"
        )
    if len(proto.graph.output) != 1:
        raise ConvsightError(
            f"ONNX file {path} has {len(proto.graph.output)} outputs; convsight needs a model "
            "with one output (class scores or feature maps)"
        )
    graph_input = inputs[0]
    tensor_type = graph_input.type.tensor_type
    if not graph_input.type.HasField("tensor_type") or tensor_type.elem_type != 1:  # FLOAT
        raise ConvsightError(
            f"ONNX file {path} takes a non-float32 input '{graph_input.name}'; convsight "
            "needs float32 images"
        )
    if not tensor_type.HasField("shape") or len(tensor_type.shape.dim) != 4:
        rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else "unknown"
        raise ConvsightError(
            f"ONNX file {path} takes an input of rank {rank}; convsight needs N x C x H x W images"
        )
    return graph_input, proto.graph.output[0]


def _dims(value: Any) -> list[int | None]:
    """The fixed sizes of a value's dimensions (None where a dimension is symbolic)."""
    shape = value.type.tensor_type.shape
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim]


def _card(
    path: Path,
    card: ModelCard | None,
    channels: int,
    size: tuple[int | None, int | None],
    graph_output: Any,
) -> ModelCard:
    """The given card checked against the graph's input, or one built from the graph."""
    return converted_card("ONNX", path, card, channels, size, tuple(_dims(graph_output)))


def _prepare(onnx: Any, proto: Any, path: Path, batch: int | None) -> Any:
    """A copy of the graph in the form onnx2torch converts (see the module docstring)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    used_domains = {node.domain for node in model.graph.node} - {"", "ai.onnx"}
    if used_domains:
        raise ConvsightError(
            f"ONNX file {path} uses operators of the domain(s) {', '.join(sorted(used_domains))}, "
            "which onnx2torch cannot convert"
        )
    opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), TARGET_OPSET
    )
    if opset > TARGET_OPSET:
        _split_to_slices(onnx, model)
        _gelu_to_elementary_ops(model)
        try:
            model = onnx.version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:
            raise ConvsightError(
                f"ONNX file {path} uses opset {opset}, which onnx2torch cannot read, and "
                f"onnx cannot convert it to opset {TARGET_OPSET} ({_first_line(exc)}); "
                f"export it again with opset_version={TARGET_OPSET}"
            ) from exc
    _fold_identity_weights(model)
    _reshape_without_allowzero(onnx, model, path)
    if batch is not None:
        _free_the_batch(onnx, model, batch)
    _drop_dead_nodes(model)
    return model


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Every constant value of the graph by name: initializers and Constant node outputs."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attribute = node.attribute[0]
            if attribute.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _split_to_slices(onnx: Any, model: Any) -> None:
    """Replace each ``Split`` by one ``Slice`` per output when its sizes are known.

    ``onnx.version_converter`` has no adapter from Split-18 (``num_outputs``) down to Split-13;
    Slice-13 is the same in every opset from 13 on.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    splits = [node for node in graph.node if node.op_type == "Split" and node.domain == ""]
    if not splits:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return
    shapes = {
        value.name: _dims(value)
        for value in list(inferred.graph.value_info) + list(inferred.graph.input)
        if value.type.HasField("tensor_type")
    }
    constants = _constants(model)
    for node in splits:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attributes.get("axis", 0))
        count = len(node.output)
        if len(node.input) > 1 and node.input[1]:
            sizes = constants.get(node.input[1])
            if sizes is None:
                continue
            sizes = [int(size) for size in sizes]
        else:
            dims = shapes.get(node.input[0])
            length = dims[axis] if dims and -len(dims) <= axis < len(dims) else None
            if length is None:
                continue
            chunk = -(-length // count)  # Split-18: equal chunks, the last one smaller
            sizes = [min(chunk, max(0, length - i * chunk)) for i in range(count)]
        if len(sizes) != count:
            continue
        index = list(graph.node).index(node)
        start = 0
        slices = []
        for i, (size, output) in enumerate(zip(sizes, node.output, strict=True)):
            prefix = f"{node.name or node.output[0]}_slice{i}"
            for part, value in (("starts", start), ("ends", start + size), ("axes", axis)):
                graph.initializer.append(
                    numpy_helper.from_array(np.array([value], dtype=np.int64), f"{prefix}_{part}")
                )
            slices.append(
                helper.make_node(
                    "Slice",
                    [node.input[0], f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_axes"],
                    [output],
                    name=prefix,
                )
            )
            start += size
        graph.node.remove(node)
        for offset, slice_node in enumerate(slices):
            graph.node.insert(index + offset, slice_node)


def _gelu_to_elementary_ops(model: Any) -> None:
    """Write each ``Gelu`` (new in opset 20, with no earlier version) with Erf or Tanh."""
    from onnx import helper, numpy_helper

    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Gelu" and n.domain == ""]:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        approximate = attributes.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        prefix = node.name or node.output[0]
        x, y = node.input[0], node.output[0]

        def constant(label: str, value: float, prefix: str = prefix) -> str:
            name = f"{prefix}_{label}"
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
            return name

        steps: list[tuple[str, list[str]]]
        if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            steps = [
                ("Mul", [x, x]),
                ("Mul", ["@0", x]),
                ("Mul", ["@1", constant("c", 0.044715)]),
                ("Add", [x, "@2"]),
                ("Mul", ["@3", constant("sqrt_2_over_pi", float(np.sqrt(2 / np.pi)))]),
                ("Tanh", ["@4"]),
                ("Add", ["@5", constant("one", 1.0)]),
                ("Mul", [x, "@6"]),
                ("Mul", ["@7", constant("half", 0.5)]),
            ]
        else:  # 0.5 x (1 + erf(x / sqrt(2)))
            steps = [
                ("Div", [x, constant("sqrt_2", float(np.sqrt(2.0)))]),
                ("Erf", ["@0"]),
                ("Add", ["@1", constant("one", 1.0)]),
                ("Mul", [x, "@2"]),
                ("Mul", ["@3", constant("half", 0.5)]),
            ]
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for i, (op, inputs) in enumerate(steps):
            inputs = [f"{prefix}_{v[1:]}" if v.startswith("@") else v for v in inputs]
            output = y if i == len(steps) - 1 else f"{prefix}_{i}"
            name = f"{prefix}_{op.lower()}{i}"
            graph.node.insert(index + i, helper.make_node(op, inputs, [output], name=name))


def _fold_identity_weights(model: Any) -> None:
    """Replace ``Identity`` nodes that copy an initializer by a copy of that initializer."""
    initializers = {t.name: t for t in model.graph.initializer}
    outputs = {value.name for value in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type != "Identity" or node.input[0] not in initializers:
            continue
        if node.output[0] in outputs:
            continue
        copy = model.graph.initializer.add()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        model.graph.node.remove(node)


def _reshape_without_allowzero(onnx: Any, model: Any, path: Path) -> None:
    """Set ``allowzero=0`` on every Reshape whose target shape holds no 0 (the same meaning)."""
    constants = _constants(model)
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attribute in node.attribute:
            if attribute.name != "allowzero" or attribute.i == 0:
                continue
            shape = constants.get(node.input[1])
            if shape is not None and (shape == 0).any():
                raise ConvsightError(
                    f"ONNX file {path} reshapes to a zero-size dimension (node "
                    f"'{node.name}', Reshape with allowzero=1), which onnx2torch cannot convert"
                )
            # A computed shape is made of tensor sizes, never 0 for images: same meaning.
            attribute.i = 0


def _free_the_batch(onnx: Any, model: Any, batch: int) -> None:
    """Let a graph exported for ``batch`` images run on any number (see module docstring)."""
    from onnx import numpy_helper

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return  # left as exported: the probe check below then says what fails
    shapes = {
        value.name: _dims(value)
        for value in list(inferred.graph.value_info) + list(inferred.graph.input)
        if value.type.HasField("tensor_type")
    }
    carries_batch = _reachable_from(graph, graph.input[0].name)
    constants = _constants(model)
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] not in carries_batch:
            continue
        target = constants.get(node.input[1])
        data = shapes.get(node.input[0])
        if target is None or target.ndim != 1 or not len(target):
            continue
        if int(target[0]) != batch or (data and data[0] is not None and data[0] != batch):
            continue  # an unknown first dimension is taken as the batch: the probe checks it
        free = target.copy()
        free[0] = 0  # allowzero=0: copy the input's first dimension, the batch
        name = f"{node.name or node.output[0]}_any_batch_shape"
        graph.initializer.append(numpy_helper.from_array(free, name))
        node.input[1] = name
    for value in list(graph.input[:1]) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = "N"
    del graph.value_info[:]


def _reachable_from(graph: Any, name: str) -> set[str]:
    """Names of the values computed from the value ``name`` (nodes are in topological order)."""
    reached = {name}
    for node in graph.node:
        if any(value in reached for value in node.input):
            reached.update(node.output)
    return reached


def _drop_dead_nodes(model: Any) -> None:
    """Remove nodes whose outputs nothing uses (e.g. Constants left behind by the steps above)."""
    graph = model.graph
    while True:
        used = {value for node in graph.node for value in node.input}
        used |= {value.name for value in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


_NOT_IMPLEMENTED = re.compile(r"operation_type='(\w+)', version=(\d+)")


def _convert(onnx2torch: Any, model: Any, path: Path) -> nn.Module:
    """The onnx2torch module of the prepared graph, or one sentence saying what it lacks."""
    try:
        return onnx2torch.convert(model)
    except NotImplementedError as exc:
        found = _NOT_IMPLEMENTED.search(str(exc))
        what = (
            f"the operator {found.group(1)} (opset {found.group(2)})" if found else _first_line(exc)
        )
        raise ConvsightError(
            f"onnx2torch cannot convert ONNX file {path}: it has no converter for {what}"
        ) from exc
    except Exception as exc:
        raise ConvsightError(
            f"onnx2torch cannot convert ONNX file {path}: {_first_line(exc)}"
        ) from exc


def _onnxruntime_outputs(path: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs onnxruntime computes for each batch from the file as given."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        return [np.asarray(session.run(None, {name: batch})[0]) for batch in batches]
    except Exception as exc:
        raise ConvsightError(
            f"onnxruntime cannot run ONNX file {path} to check the conversion: {_first_line(exc)}"
        ) from exc


def _check_against_onnxruntime(
    path: Path, module: nn.Module, card: ModelCard, batch: int | None
) -> tuple[float, float]:
    """Largest |torch - onnxruntime| over the probe batches, and the tolerance; refuse above it.

    A file with a fixed batch size B is run by onnxruntime on two probes of B images; the
    converted module runs on the first (B images), on both at once (2B) and on one image.
    A file with a free batch size is probed with two images, then with the first alone.
    """
    generator = torch.Generator().manual_seed(PROBE_SEED)
    height, width = card.input_size
    probes = [
        torch.randn(batch or 2, card.channels, height, width, generator=generator)
        for _ in range(2 if batch else 1)
    ]
    expected = [
        torch.from_numpy(out).float()
        for out in _onnxruntime_outputs(path, [p.numpy() for p in probes])
    ]
    tolerance = TOLERANCE * max(1.0, max(float(e.abs().max()) for e in expected))
    module.eval()
    # The batch size the file was exported for: the conversion itself.
    try:
        with torch.no_grad():
            got = _output(module(probes[0]))
    except Exception as exc:
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} does not run on "
            f"{card.channels}x{height}x{width} inputs: {_first_line(exc)}"
        ) from exc
    if got.shape != expected[0].shape:
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} returns "
            f"{tuple(got.shape)} where onnxruntime returns {tuple(expected[0].shape)}"
        )
    difference = float((got - expected[0]).abs().max())
    # Other batch sizes: one image, and two probes at once for a fixed-batch file.
    others = [(probes[0][:1], expected[0][:1])]
    if batch:
        others.append((torch.cat(probes), torch.cat(expected)))
    for x, reference in others:
        try:
            with torch.no_grad():
                got = _output(module(x))
            runs = got.shape == reference.shape
        except Exception:
            runs = False
        if not runs:
            if batch:
                raise ConvsightError(
                    f"ONNX file {path} was exported for batches of {batch} and its converted "
                    "model cannot take other batch sizes; export it again with a dynamic batch "
                    "dimension (dynamic_shapes in torch.onnx.export, or dynamic_axes)"
                )
            raise ConvsightError(
                f"the PyTorch model converted from ONNX file {path} does not run on "
                f"{len(x)} image{'s' if len(x) > 1 else ''} at once"
            )
        difference = max(difference, float((got - reference).abs().max()))
    if not difference <= tolerance:  # also refuses NaN
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} differs from onnxruntime by "
            f"up to {difference:.3g} on a probe batch (tolerance {tolerance:.3g}), so "
            "convsight will not use it"
        )
    return difference, tolerance


def _output(out: Any) -> torch.Tensor:
    """The one output tensor of the converted module."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200].rstrip(".")
