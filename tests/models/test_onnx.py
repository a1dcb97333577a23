"""ONNX files: exported by torch.onnx.export, converted by onnx2torch, checked by onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.layers import capture, conv_layer_names, describe_layers, layer_names
from convsight.models import ModelCard
from convsight.models.convert import onnx as onnx_file
from convsight.models.convert.onnx import load_onnx

onnx = pytest.importorskip("onnx")
onnx2torch = pytest.importorskip("onnx2torch")
pytest.importorskip("onnxruntime")


class TutorialCNN(nn.Module):
    """The PyTorch tutorial's small CNN, flattening with ``x.view(x.size(0), -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


class ShuffleBlockNet(nn.Module):
    """ShuffleNet's pattern: split channels in two (``chunk``), merge, shuffle (a 5-D view);
    with a GELU, as in ConvNeXt."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, nn.functional.gelu(self.branch(right))], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x.mean(dim=(2, 3)))


def export(module: nn.Module, example: torch.Tensor, path: Path, **options) -> Path:
    """``torch.onnx.export`` with its console chatter silenced."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), **options)
    return path


@pytest.fixture(scope="module")
def tutorial() -> TutorialCNN:
    torch.manual_seed(0)
    return TutorialCNN().eval()


@pytest.fixture(scope="module")
def tutorial_file(tutorial, tmp_path_factory) -> Path:
    """The tutorial CNN exported the default way (torch 2.14: the dynamo exporter, opset 20),
    for a fixed batch of 2 images."""
    path = tmp_path_factory.mktemp("onnx") / "tutorial.onnx"
    return export(tutorial, torch.randn(2, 1, 28, 28), path)


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet_model(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    return load_onnx(export(resnet, torch.randn(1, 3, 64, 64), path), None)


def opset(path: Path) -> int:
    model = onnx.load(str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.slow
def test_default_export_of_tutorial_cnn_matches_torch_at_any_batch_size(tutorial, tutorial_file):
    # Untouched, onnx2torch cannot read this export (opset-19 Reshape, allowzero=1).
    assert opset(tutorial_file) > onnx_file.TARGET_OPSET
    with pytest.raises(NotImplementedError):
        onnx2torch.convert(str(tutorial_file))

    model = load_onnx(tutorial_file, None)
    card = model.card
    assert (card.arch, card.input_size, card.channels, card.num_classes) == (
        "onnx:tutorial.onnx",
        (28, 28),
        1,
        10,
    )
    assert card.mean == (0.0,) and card.std == (1.0,)
    checked = card.arch_options
    assert 0 <= checked["onnxruntime_max_abs_diff"] <= checked["onnxruntime_tolerance"]
    assert "onnxruntime check" in card.source
    # Exported for 2 images, the converted model takes any number.
    for batch in (1, 3):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(model.module(x), tutorial(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_torchscript_export_with_a_shape_subgraph_converts(tutorial, tmp_path):
    # dynamo=False at the default opset (20) writes Shape-19 for x.size(0): onnx2torch has
    # converters up to Shape-15 only, so convsight converts the graph to opset 17 first.
    path = export(
        tutorial,
        torch.randn(2, 1, 28, 28),
        tmp_path / "tutorial_ts.onnx",
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Shape" in ops and opset(path) > onnx_file.TARGET_OPSET
    with pytest.raises(NotImplementedError, match="Shape"):
        onnx2torch.convert(str(path))
    model = load_onnx(path, None)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.module(x), tutorial(x), atol=1e-4, rtol=0)
    assert any(isinstance(m, nn.Conv2d) for m in model.module.modules())


@pytest.mark.slow
def test_split_and_channel_shuffle_export_runs_at_any_batch_size(tmp_path):
    # The dynamo exporter writes chunk() as Split-18 (num_outputs) and GELU as Gelu-20, which
    # onnx cannot convert down to opset 17; convsight writes them as Slices and as the erf
    # formula first. The 5-D shuffle view, exported for one image, keeps its batch free.
    torch.manual_seed(0)
    net = ShuffleBlockNet().eval()
    path = export(net, torch.randn(1, 3, 16, 16), tmp_path / "shuffle.onnx")
    assert {"Split", "Gelu"} <= {node.op_type for node in onnx.load(str(path)).graph.node}
    model = load_onnx(path, None)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.module(x), net(x), atol=1e-5, rtol=0)


class BatchBound(nn.Module):
    """Adds a constant with one row per image of the export batch: it cannot take others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) + torch.arange(2.0)[:, None])[:, :4]


def test_export_bound_to_its_batch_size_is_refused_with_the_fix(tmp_path):
    path = export(BatchBound(), torch.randn(2, 1, 4, 4), tmp_path / "bound.onnx", dynamo=False)
    with pytest.raises(ConvsightError, match="exported for batches of 2 .* dynamic batch"):
        load_onnx(path, None)


@pytest.mark.slow
def test_resnet18_from_onnx_matches_torch_and_its_layers_are_addressable(resnet, resnet_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(resnet_model.module(x), resnet(x), atol=1e-4, rtol=1e-4)
    assert resnet_model.card.input_size == (64, 64) and resnet_model.card.num_classes == 10

    rows = describe_layers(resnet_model.module, resnet_model.example_input())
    assert [row.name for row in rows] == layer_names(resnet_model.module)
    convs = conv_layer_names(resnet_model.module)
    assert len(convs) == 20  # resnet18: 1 stem + 16 block + 3 downsample convolutions
    shapes = {row.name: row.output_shape for row in rows}
    assert shapes[convs[0]] == (64, 32, 32)  # the stem conv, stride 2

    last = convs[-1]
    with capture(resnet_model.module, [last]) as outputs:
        with torch.no_grad():
            resnet_model.module(x)
    assert outputs[last].shape[0] == 2 and outputs[last].shape[1] == 512
    # The hook is gone after the block.
    assert not resnet_model.module.get_submodule(last)._forward_hooks


@pytest.mark.slow
def test_conversion_that_differs_from_onnxruntime_is_refused(tutorial_file, monkeypatch):
    real = onnx_file._onnxruntime_outputs

    def off_by_a_bit(path, batches):
        return [out + 0.01 for out in real(path, batches)]

    monkeypatch.setattr(onnx_file, "_onnxruntime_outputs", off_by_a_bit)
    with pytest.raises(ConvsightError, match="differs from onnxruntime by up to 0.01") as info:
        load_onnx(tutorial_file, None)
    assert "\n" not in str(info.value)


def test_garbage_bytes_are_refused_in_one_sentence(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ConvsightError, match="broken.onnx") as info:
        load_onnx(path, None)
    assert "\n" not in str(info.value)
    with pytest.raises(ConvsightError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx", None)


@pytest.mark.slow
def test_free_height_and_width_need_a_card(tutorial_file, tmp_path):
    model = onnx.load(str(tutorial_file))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = tmp_path / "any_size.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConvsightError, match="any height and width; give the size .* --input-size"):
        load_onnx(path, None)

    card = ModelCard(
        name="digits",
        arch="onnx",
        input_size=(28, 28),
        channels=1,
        mean=[0.1307],
        std=[0.3081],
        labels=[str(i) for i in range(10)],
    )
    loaded = load_onnx(path, card)
    assert loaded.card.arch == "onnx:any_size.onnx" and loaded.card.mean == (0.1307,)
    assert loaded.card.label(3) == "3"

    three_channels = ModelCard(
        name="rgb", arch="onnx", input_size=(28, 28), channels=3, mean=0.0, std=1.0
    )
    with pytest.raises(ConvsightError, match="says 3 input channels but ONNX file"):
        load_onnx(path, three_channels)


def test_operator_onnx2torch_lacks_is_named(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Hardmax", ["flat"], ["y"]),
        ],
        "hardmax",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "hardmax.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConvsightError, match="no converter for the operator Hardmax"):
        load_onnx(path, None)
