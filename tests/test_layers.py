import pytest
import torch

from convsight.errors import ConvsightError, UnknownLayerError
from convsight.layers import (
    capture,
    check_map_layers,
    conv_layer_names,
    describe_layers,
    forward_to,
    get_layer,
    layer_names,
    output_shapes,
)
from convsight.models import load_model
from tests.conftest import hook_count


def test_layer_listing_names_types_and_shapes():
    model = load_model("mnist-cnn", stride=1, padding="valid")
    rows = {r.name: r for r in describe_layers(model.module, model.example_input())}
    assert list(rows) == layer_names(model.module)
    assert rows["features.0"].type == "Conv2d"
    assert rows["features.0"].output_shape == (32, 26, 26)
    assert rows["features.3"].output_shape == (64, 11, 11)
    assert rows["classifier.4"].output_shape == (10,)
    assert rows["features.0"].parameters == 32 * 9 + 32
    assert hook_count(model.module) == 0


def test_stride_two_same_padding_shapes():
    model = load_model("mnist-cnn", stride=2, padding="same")
    rows = {r.name: r for r in describe_layers(model.module, model.example_input())}
    assert rows["features.0"].output_shape == (32, 14, 14)
    assert rows["features.3"].output_shape == (64, 4, 4)


def test_unknown_layer_lists_nearest_names():
    model = load_model("mnist-cnn")
    with pytest.raises(UnknownLayerError) as err:
        get_layer(model.module, "features.30")
    message = str(err.value)
    assert "unknown layer 'features.30'" in message
    assert "features.3" in message


def test_capture_removes_hooks_after_exception(tiny):
    with pytest.raises(RuntimeError):
        with capture(tiny.module, ["features.0", "features.3"]):
            assert hook_count(tiny.module) == 2
            raise RuntimeError("boom")
    assert hook_count(tiny.module) == 0


def test_capture_removes_hooks_after_failure_inside_forward(tiny):
    def broken(*_):
        raise ValueError("inside forward")

    handle = tiny.module.features[4].register_forward_hook(broken)
    with pytest.raises(ValueError):
        with capture(tiny.module, ["features.0"]):
            tiny.module(tiny.example_input())
    handle.remove()
    assert hook_count(tiny.module) == 0


def test_forward_to_stops_at_the_layer(tiny):
    calls = []
    handle = tiny.module.classifier.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    out = forward_to(tiny.module, x, ["features.0"])
    handle.remove()
    assert calls == []
    assert out["features.0"].shape == (2, 8, 32, 32)
    assert torch.allclose(out["features.0"], tiny.module.features[0](x))
    assert hook_count(tiny.module) == 0


def test_forward_to_keeps_gradients(tiny):
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = forward_to(tiny.module, x, ["features.3"])["features.3"]
    out.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_conv_layer_names(tiny):
    assert conv_layer_names(tiny.module) == ["features.0", "features.3"]


def test_output_shapes_and_map_layer_check():
    model = load_model("mnist-cnn", stride=1, padding="valid")
    x = model.example_input()
    shapes = output_shapes(model.module, ["features.3", "classifier.4"], x)
    assert shapes == {"features.3": (64, 11, 11), "classifier.4": (10,)}
    assert check_map_layers(model.module, ["features.0"], x) == {"features.0": (32, 26, 26)}
    with pytest.raises(ConvsightError, match=r"'classifier.4' outputs 10 per input, not C x H"):
        check_map_layers(model.module, ["features.0", "classifier.4"], x, "; a CAM needs one")
    with pytest.raises(UnknownLayerError, match="unknown layer 'features.9'"):
        check_map_layers(model.module, ["features.9"], x)
    assert hook_count(model.module) == 0
