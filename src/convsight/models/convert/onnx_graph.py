"""An ONNX graph brought into the form onnx2torch covers, each step exact.

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convsight.errors import ConvsightError
from convsight.models.convert.converted import first_line

TARGET_OPSET = 17
"""The opset a newer graph is converted down to before onnx2torch reads it."""


def dims(value: Any) -> list[int | None]:
    """The fixed sizes of a value's dimensions (None where a dimension is symbolic, unset,
    or written as 0 or -1)."""
    shape = value.type.tensor_type.shape
    return [
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        for dim in shape.dim
    ]


def prepare_graph(onnx: Any, proto: Any, path: Path, batch: int | None) -> Any:
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
                f"onnx cannot convert it to opset {TARGET_OPSET} ({first_line(exc)}); "
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


def _inferred_shapes(onnx: Any, model: Any) -> dict[str, list[int | None]] | None:
    """The dimensions of every value shape inference finds (None: inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None
    return {
        value.name: dims(value)
        for value in list(inferred.graph.value_info) + list(inferred.graph.input)
        if value.type.HasField("tensor_type")
    }


def _split_to_slices(onnx: Any, model: Any) -> None:
    """Replace each ``Split`` by one ``Slice`` per output when its sizes are known.

    ``onnx.version_converter`` has no adapter from Split-18 (``num_outputs``) down to Split-13;
    Slice-13 is the same in every opset from 13 on.
    """
    splits = [node for node in model.graph.node if node.op_type == "Split" and node.domain == ""]
    if not splits:
        return
    shapes = _inferred_shapes(onnx, model)
    if shapes is None:
        return
    constants = _constants(model)
    for node in splits:
        found = _split_sizes(node, shapes, constants)
        if found is not None:
            _replace_by_slices(model.graph, node, *found)


def _split_sizes(
    node: Any, shapes: dict[str, list[int | None]], constants: dict[str, np.ndarray]
) -> tuple[int, list[int]] | None:
    """The axis of a ``Split`` and the size of each output (None when they are not known)."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(attributes.get("axis", 0))
    count = len(node.output)
    if len(node.input) > 1 and node.input[1]:
        given = constants.get(node.input[1])
        if given is None:
            return None
        sizes = [int(size) for size in given]
    else:
        found = shapes.get(node.input[0])
        length = found[axis] if found and -len(found) <= axis < len(found) else None
        if length is None:
            return None
        chunk = -(-length // count)  # Split-18: equal chunks, the last one smaller
        sizes = [min(chunk, max(0, length - i * chunk)) for i in range(count)]
    return (axis, sizes) if len(sizes) == count else None


def _replace_by_slices(graph: Any, node: Any, axis: int, sizes: list[int]) -> None:
    """Put one ``Slice`` per output of the ``Split`` ``node`` where it stands."""
    from onnx import helper, numpy_helper

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
    shapes = _inferred_shapes(onnx, model)
    if shapes is None:
        return  # left as exported: the probe check after conversion then says what fails
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
        batch_dims = value.type.tensor_type.shape.dim
        if len(batch_dims):
            batch_dims[0].dim_param = "N"
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
