"""Keras 3 ``.keras`` files: rebuilt as a PyTorch module with the Keras layer names.

Keras on the torch backend makes a model an ``nn.Module``, but its layers are not registered
as sub-modules (``named_modules()`` lists only ``_functional`` and parameter dicts) and they
compute channels-last (N x H x W x C) maps. So convsight reads the file with Keras
(``safe_mode=True``: a Lambda layer's Python code is never run) and rebuilds the graph from
standard PyTorch layers, one sub-module per Keras layer, named as in Keras (``conv2d_1``,
``dense``); a layer with an activation is an ``nn.Sequential`` of its op and the activation
(``conv2d_1.conv``, ``conv2d_1.activation``), so ``conv2d_1`` itself outputs what the Keras
layer outputs. The module takes N x C x H x W input and keeps feature maps channels-first;
``Flatten`` flattens in Keras's (H, W, C) order, so the dense layers keep their Keras weights.

The rebuilt module is then checked once against Keras's own predictions on a seeded probe
batch; the largest absolute difference and the tolerance are kept in
``model.card.arch_options`` (``keras_max_abs_diff``, ``keras_tolerance``) and in
``model.card.source``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.models.convert.converted import checked_model, converted_card, first_line
from convsight.models.convert.keras_layers import convert_layer
from convsight.models.model import Model
from convsight.paths import require_file

TOLERANCE = 1e-4
"""Largest allowed |torch - Keras|, relative to max(1, the largest output magnitude)."""
PROBE_SEED = 0


def _keras() -> Any:
    """The keras module, imported with the torch backend unless one was chosen already.

    The rebuilt module does not depend on the backend (weights are read as numpy), so a
    Keras already imported with another backend is used as it is.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "keras":
            raise  # Keras itself is missing: the caller names the convsight[keras] extra
        backend = os.environ.get("KERAS_BACKEND")
        raise ConvsightError(
            f"Keras cannot start its backend '{backend}' (KERAS_BACKEND): {exc}"
        ) from exc
    except ValueError as exc:  # an unknown backend name
        backend = os.environ.get("KERAS_BACKEND")
        raise ConvsightError(
            f"Keras cannot start its backend '{backend}' (KERAS_BACKEND): {exc}"
        ) from exc
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ConvsightError(
            f"reading .keras files needs Keras 3, but Keras {version} is installed"
        )
    return keras


def load_keras(path: Path, card: ModelCard | None, output: int | str | None = None) -> Model:
    """A Model from a Keras 3 ``.keras`` file, its card built from the model when ``card`` is None
    (with ``output``, which a one-output model refuses).

    Without a card the Keras input (N x H x W x C) must have a fixed height, width and
    channels; mean/std are then the identity (0 and 1: the caller warns). The card describes
    the N x C x H x W input convsight gives. The rebuilt module is refused when its
    predictions differ from Keras's own by more than the tolerance.
    """
    path = require_file(path, "Keras file")
    if path.suffix.lower() != ".keras":
        raise ConvsightError(
            f"Keras file {path} is not a Keras 3 .keras file; save the model with "
            "model.save('NAME.keras') (legacy .h5 and SavedModel formats are not read)"
        )
    keras = _keras()
    keras_model = _read(keras, path)
    functional = _functional(keras, keras_model, path)
    module = _build(keras, functional, path)
    card = _card(path, card, functional, output)
    difference, tolerance = _check_against_keras(path, keras, keras_model, module, card)
    return checked_model(module, card, "Keras", path, "keras", difference, tolerance)


def _read(keras: Any, path: Path) -> Any:
    """The Keras model in ``path``, read with ``safe_mode=True``."""
    if not zipfile.is_zipfile(path):
        raise ConvsightError(
            f"cannot read Keras file {path}: it is not a Keras 3 model file (not a zip archive)"
        )
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except PermissionError as exc:
        raise ConvsightError(f"cannot read Keras file {path}: permission denied") from exc
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise ConvsightError(
                f"Keras file {path} holds Python code (a Lambda layer or function); "
                "convsight reads Keras files with safe_mode=True and never runs code from a file"
            ) from exc
        if "Could not locate" in text or "custom_objects" in text:
            raise ConvsightError(
                f"Keras file {path} uses a custom layer, model or function that is not part of "
                "Keras, which convsight cannot rebuild (it reads built-in Keras layers only)"
            ) from exc
        raise ConvsightError(
            f"cannot read Keras file {path}: it is not a Keras 3 model file ({first_line(exc)})"
        ) from exc


def _functional(keras: Any, keras_model: Any, path: Path) -> Any:
    """The graph (a Keras Functional) behind a Sequential or functional model."""
    functional = keras_model
    if isinstance(keras_model, keras.Sequential):
        functional = getattr(keras_model, "_functional", None)
        if functional is None:
            raise ConvsightError(
                f"Keras file {path} holds a Sequential model that was never built with an "
                "input shape; build it with keras.Input(...) first and save it again"
            )
    if not hasattr(functional, "_nodes_by_depth"):
        raise ConvsightError(
            f"Keras file {path} holds a subclassed model ({type(keras_model).__name__}); "
            "convsight reads Sequential and functional models"
        )
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise ConvsightError(
            f"Keras file {path} holds a model with {len(functional.inputs)} inputs and "
            f"{len(functional.outputs)} outputs; convsight needs one image input and one output"
        )
    shape = tuple(functional.inputs[0].shape)
    if len(shape) != 4:
        raise ConvsightError(
            f"Keras file {path} holds a model whose input has shape {_shape(shape)}; "
            "convsight needs images (N x H x W x C)"
        )
    return functional


class KerasGraph(nn.Module):
    """A Keras functional graph on PyTorch layers named as in Keras (N x C x H x W maps)."""

    def __init__(
        self, layers: list[tuple[str, nn.Module, list[int], list[int]]], inputs: int, output: int
    ) -> None:
        super().__init__()
        self._steps: list[tuple[str, list[int], list[int]]] = []
        self._input = inputs
        self._output = output
        for name, module, args, outs in layers:
            self.add_module(name, module)
            self._steps.append((name, args, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, Any] = {self._input: x}
        for name, args, outs in self._steps:
            step = self._modules[name]
            assert step is not None  # added in __init__
            result = step(*[values[a] for a in args])
            results = result if isinstance(result, (tuple, list)) else [result]
            values.update(zip(outs, results, strict=True))
        return values[self._output]


def _reserved(name: str) -> bool:
    """Whether ``name`` is already an attribute of every module (``forward``, ``training``)."""
    return hasattr(KerasGraph, name) or name in vars(nn.Module())


def _build(keras: Any, functional: Any, path: Path) -> KerasGraph:
    """The PyTorch rebuild of a Keras Functional (nested models become nested graphs)."""
    ids: dict[int, int] = {}  # KerasTensor id -> value number

    def number(tensor: Any) -> int:
        return ids.setdefault(id(tensor), len(ids))

    inputs = number(functional.inputs[0])
    layers: list[tuple[str, nn.Module, list[int], list[int]]] = []
    seen: set[str] = set()
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            layer = node.operation
            name = layer.name
            if name in seen:
                raise ConvsightError(
                    f"Keras file {path}: layer '{name}' is called more than once; convsight "
                    "needs one call per layer so that its name means one output"
                )
            seen.add(name)
            if not name or "." in name or name.startswith("_") or _reserved(name):
                raise ConvsightError(
                    f"Keras file {path}: layer name '{name}' cannot name a PyTorch module"
                )
            in_shapes = [tuple(t.shape) for t in node.input_tensors]
            if isinstance(layer, keras.Model):
                module: nn.Module = _build(keras, _functional(keras, layer, path), path)
            else:
                module = convert_layer(keras, layer, in_shapes, path)
            args = [number(t) for t in node.input_tensors]
            outs = [number(t) for t in node.outputs]
            layers.append((name, module, args, outs))
    return KerasGraph(layers, inputs, number(functional.outputs[0]))


def _card(
    path: Path, card: ModelCard | None, functional: Any, output: int | str | None
) -> ModelCard:
    """The given card checked against the Keras input (N x H x W x C: the height and width
    come from the file when fixed), or one built from the model."""
    _, height, width, channels = tuple(functional.inputs[0].shape)
    if channels is None:
        raise ConvsightError(
            f"Keras file {path} takes an input with a variable number of channels; "
            "convsight needs a fixed one"
        )
    shape = tuple(functional.outputs[0].shape)
    return converted_card("Keras", path, card, channels, (height, width), shape, output)


def _check_against_keras(
    path: Path, keras: Any, keras_model: Any, module: nn.Module, card: ModelCard
) -> tuple[float, float]:
    """Largest |rebuilt - Keras| on a seeded probe batch, and the tolerance; refuse above it."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    height, width = card.input_size
    probe = torch.randn(2, card.channels, height, width, generator=generator)
    try:
        with torch.no_grad():
            out = keras_model(probe.permute(0, 2, 3, 1).numpy(), training=False)
        expected = torch.from_numpy(np.array(keras.ops.convert_to_numpy(out), dtype=np.float32))
    except Exception as exc:
        raise ConvsightError(
            f"Keras cannot run the model in {path} on {height}x{width} inputs to check the "
            f"rebuild: {first_line(exc)}"
        ) from exc
    if expected.ndim == 4:
        expected = expected.permute(0, 3, 1, 2)
    module.eval()
    try:
        with torch.no_grad():
            got = module(probe)
    except Exception as exc:
        raise ConvsightError(
            f"the PyTorch rebuild of Keras file {path} does not run on "
            f"{card.channels}x{height}x{width} inputs: {first_line(exc)}"
        ) from exc
    if got.shape != expected.shape:
        raise ConvsightError(
            f"the PyTorch rebuild of Keras file {path} returns {tuple(got.shape)} where Keras "
            f"returns {tuple(expected.shape)}"
        )
    difference = float((got - expected).abs().max())
    tolerance = TOLERANCE * max(1.0, float(expected.abs().max()))
    if not difference <= tolerance:  # also refuses NaN
        raise ConvsightError(
            f"the PyTorch rebuild of Keras file {path} differs from Keras's own predictions by "
            f"up to {difference:.3g} on a probe batch (tolerance {tolerance:.3g}), so convsight "
            "will not use it"
        )
    return difference, tolerance


def _shape(shape: tuple) -> str:
    return "x".join("?" if s is None else str(s) for s in shape)
