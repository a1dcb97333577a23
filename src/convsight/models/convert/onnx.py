"""``.onnx`` files: converted to PyTorch with onnx2torch, then checked once against onnxruntime.

Layers are the converted modules, named after the ONNX nodes (``node_conv2d``, ``conv1/Conv``).
Before conversion the graph is brought into the form onnx2torch covers, each step exact (see
:mod:`convsight.models.convert.onnx_graph`).

The converted model is then run next to onnxruntime on the file as given (a seeded probe batch,
plus one image and two batches at once for a fixed-batch file); the largest absolute difference
and the tolerance are kept in ``model.card.arch_options`` (``onnxruntime_max_abs_diff``,
``onnxruntime_tolerance``) and in ``model.card.source``.

A graph with several outputs becomes a module that returns a dict of them by their ONNX
names, in the graph's order; the card's ``output`` (``--output NAME`` or ``--output INDEX``)
says which holds the scores, and every output is checked against onnxruntime.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.models.convert.converted import checked_model, converted_card, first_line
from convsight.models.convert.onnx_graph import TARGET_OPSET, dims, prepare_graph
from convsight.models.model import Model
from convsight.paths import require_file

__all__ = ["TARGET_OPSET", "load_onnx"]

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


def load_onnx(path: Path, card: ModelCard | None, output: int | str | None = None) -> Model:
    """A Model from an ``.onnx`` file, its card built from the graph when ``card`` is None.

    Without a card the input must have fixed channels, height and width; mean/std are then
    the identity (0 and 1: the caller warns), and ``output`` names the output that holds
    the scores of a graph with several (a card names it itself). The converted module is
    checked against onnxruntime on a probe batch and refused when it differs by more than
    the tolerance.
    """
    onnx, onnx2torch, _ = _modules()
    path = require_file(path, "ONNX file")
    proto = _read(onnx, path)
    graph_input, graph_outputs = _signature(proto, path)
    batch, channels, height, width = dims(graph_input)
    if channels is None:
        raise ConvsightError(
            f"ONNX file {path} takes an input with a variable number of channels; "
            "convsight needs a fixed one"
        )
    card = _card(path, card, channels, (height, width), graph_outputs, output)
    prepared = prepare_graph(onnx, proto, path, batch)
    module = _convert(onnx2torch, prepared, path)
    if len(graph_outputs) > 1:
        _outputs_by_name(module, [value.name for value in graph_outputs])
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
            f"cannot read ONNX file {path}: it is not an ONNX model ({first_line(exc)})"
        ) from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConvsightError(
            f"ONNX file {path} is not a valid ONNX model: {first_line(exc)}"
        ) from exc
    if not len(proto.graph.node):
        raise ConvsightError(f"ONNX file {path} holds no graph nodes")
    return proto


def _signature(proto: Any, path: Path) -> tuple[Any, list[Any]]:
    """The one image input and the outputs of the graph, else one sentence."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ConvsightError(
            f"ONNX file {path} takes {len(inputs)} inputs; convsight needs a model with one "
            "image input"
        )
    if not proto.graph.output:
        raise ConvsightError(f"ONNX file {path} has no outputs")
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
    return graph_input, list(proto.graph.output)


def _card(
    path: Path,
    card: ModelCard | None,
    channels: int,
    size: tuple[int | None, int | None],
    graph_outputs: list[Any],
    output: int | str | None,
) -> ModelCard:
    """The given card checked against the graph's input, or one built from the graph (its
    class count from the output chosen, when there are several)."""
    chosen = graph_outputs[0] if len(graph_outputs) == 1 else None
    key = card.output if card is not None else output
    names = [value.name for value in graph_outputs]
    if len(graph_outputs) > 1 and key in names:
        chosen = graph_outputs[names.index(key)]
    elif len(graph_outputs) > 1 and isinstance(key, int) and -len(names) <= key < len(names):
        chosen = graph_outputs[key]
    shape = tuple(dims(chosen)) if chosen is not None else None
    return converted_card("ONNX", path, card, channels, size, shape, output)


def _outputs_by_name(module: fx.GraphModule, names: list[str]) -> None:
    """Make the converted graph (a ``torch.fx.GraphModule``) return a dict of its outputs by
    their ONNX names instead of a list."""
    graph = module.graph
    node = next(n for n in graph.nodes if n.op == "output")
    values = node.args[0]
    if not isinstance(values, (tuple, list)) or len(values) != len(names):
        raise ConvsightError(
            f"onnx2torch made {len(values) if isinstance(values, (tuple, list)) else 1} "
            f"outputs of a graph with {len(names)}"
        )
    node.args = (dict(zip(names, values, strict=True)),)
    module.recompile()


_NOT_IMPLEMENTED = re.compile(r"operation_type='(\w+)', version=(\d+)")


def _convert(onnx2torch: Any, model: Any, path: Path) -> fx.GraphModule:
    """The onnx2torch module of the prepared graph, or one sentence saying what it lacks."""
    try:
        return onnx2torch.convert(model)
    except NotImplementedError as exc:
        found = _NOT_IMPLEMENTED.search(str(exc))
        what = (
            f"the operator {found.group(1)} (opset {found.group(2)})" if found else first_line(exc)
        )
        raise ConvsightError(
            f"onnx2torch cannot convert ONNX file {path}: it has no converter for {what}"
        ) from exc
    except Exception as exc:
        raise ConvsightError(
            f"onnx2torch cannot convert ONNX file {path}: {first_line(exc)}"
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
        return [_joined(session.run(None, {name: batch})) for batch in batches]
    except Exception as exc:
        raise ConvsightError(
            f"onnxruntime cannot run ONNX file {path} to check the conversion: {first_line(exc)}"
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
    difference = _exported_batch_difference(path, module, card, probes[0], expected[0])
    # Other batch sizes: one image, and two probes at once for a fixed-batch file.
    others = [(probes[0][:1], expected[0][:1])]
    if batch:
        others.append((torch.cat(probes), torch.cat(expected)))
    for x, reference in others:
        difference = max(difference, _other_batch_difference(path, module, x, reference, batch))
    if not difference <= tolerance:  # also refuses NaN
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} differs from onnxruntime by "
            f"up to {difference:.3g} on a probe batch (tolerance {tolerance:.3g}), so "
            "convsight will not use it"
        )
    return difference, tolerance


def _exported_batch_difference(
    path: Path, module: nn.Module, card: ModelCard, probe: torch.Tensor, expected: torch.Tensor
) -> float:
    """Largest |torch - onnxruntime| on the batch size the file was exported for: the
    conversion itself (a module that does not run or returns another shape is refused)."""
    try:
        with torch.no_grad():
            got = _output(module(probe))
    except Exception as exc:
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} does not run on "
            f"{card.channels}x{card.input_size[0]}x{card.input_size[1]} inputs: "
            f"{first_line(exc)}"
        ) from exc
    if got.shape != expected.shape:
        raise ConvsightError(
            f"the PyTorch model converted from ONNX file {path} returns "
            f"{tuple(got.shape)} where onnxruntime returns {tuple(expected.shape)}"
        )
    return float((got - expected).abs().max())


def _other_batch_difference(
    path: Path, module: nn.Module, x: torch.Tensor, reference: torch.Tensor, batch: int | None
) -> float:
    """Largest |torch - onnxruntime| on a batch of another size; refused when it cannot run."""
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
    return float((got - reference).abs().max())


def _output(out: Any) -> torch.Tensor:
    """The output of the converted module as one tensor (see :func:`_joined`)."""
    if isinstance(out, torch.Tensor):
        return out.float()
    parts = list(out.values()) if isinstance(out, dict) else list(out)
    return torch.from_numpy(_joined([part.detach().float().cpu().numpy() for part in parts]))


def _joined(outputs: Any) -> np.ndarray:
    """One output as it is; several as one row per image of every output flattened in turn,
    so that one comparison covers them all."""
    if not isinstance(outputs, (tuple, list)):
        return np.asarray(outputs)
    if len(outputs) == 1:
        return np.asarray(outputs[0])
    rows = [np.asarray(part) for part in outputs]
    if any(part.ndim == 0 or len(part) != len(rows[0]) for part in rows):
        raise ConvsightError(
            "an ONNX model with several outputs must return one row per image in each"
        )
    return np.concatenate([part.reshape(len(part), -1) for part in rows], axis=1)
