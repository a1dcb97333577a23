"""Grad-CAM's default layer (issue 25): the last stage's output, found by one forward with
hooks on any classifier (torchvision, timm, the seed networks, a user's module); the JSON
says which layer and why; ``layer=`` / ``--layer`` overrides."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from convsight.attribution import GradCAM, ScoreCAM, cam_layer, default_cam_layer
from convsight.errors import ConvsightError
from convsight.models import Model, load_model
from convsight.studies.saliency import SaliencyRequest, write_saliency


def _torchvision(name: str, size: int = 224, **kwargs) -> Model:
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None, **kwargs)
    return Model.from_module(module, input_size=size)


def _timm(name: str) -> Model:
    torch.manual_seed(0)
    return Model.from_module(timm.create_model(name, pretrained=False), input_size=64)


# (model, its last stage's output): what pytorch-grad-cam's documentation names (ResNet's
# layer4[-1], VGG's and DenseNet's features[-1], MNASNet's layers[-1]) has this output.
# Small inputs keep the forward cheap; the stage is the same at 224.
CASES = {
    "resnet18": (lambda: _torchvision("resnet18"), "layer4"),
    "densenet121": (lambda: _torchvision("densenet121", 64), "features"),
    "mobilenet_v2": (lambda: _torchvision("mobilenet_v2", 64), "features"),
    "vgg16": (lambda: _torchvision("vgg16", 64, num_classes=10), "features"),
    "timm:resnet18": (lambda: _timm("resnet18"), "layer4"),
    "timm:regnetx_002": (lambda: _timm("regnetx_002"), "s4"),
    "mnist-cnn": (lambda: load_model("mnist-cnn"), "features"),
    "five-class-cnn": (lambda: load_model("five-class-cnn"), "features"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_default_layer_is_the_last_stages_output(name):
    make, expected = CASES[name]
    model = make()
    layer, why = cam_layer(model)
    assert layer == expected
    assert why.startswith("default: the last stage's output")
    # it is the tensor the head pools or flattens: the input of the first layer after it
    # that reads the whole map (ResNet's avgpool, VGG's avgpool; DenseNet pools in forward)
    seen = {}
    stage = model.module.get_submodule(layer)
    handle = stage.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model.module(model.example_input())
    handle.remove()
    assert seen["out"].dim() == 4 and seen["out"].shape[-1] > 1
    assert f"{'x'.join(map(str, seen['out'].shape[1:]))} maps" in why


@pytest.mark.slow
def test_resnet_gradcam_reads_layer4_unless_told_otherwise():
    model = _torchvision("resnet18", 64)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    method = GradCAM(model)
    default = method.attribute(x, [1, 7])
    assert method.last_run["layer"] == "layer4" and "last stage" in method.last_run["layer_reason"]
    assert default.shape == (2, 1, 2, 2)
    assert torch.equal(default, GradCAM(model).attribute(x, [1, 7], layer="layer4"))
    inner = method.attribute(x, [1, 7], layer="layer4.1.bn2")  # the old default: a branch
    assert method.last_run == {**method.last_run, "layer": "layer4.1.bn2", "layer_reason": "given"}
    assert not torch.allclose(inner, default)
    override = method.attribute(x, [1, 7], layer="layer3")
    assert override.shape == (2, 1, 4, 4) and method.last_run["layer"] == "layer3"


@pytest.mark.slow
def test_a_last_stage_of_one_pixel_gives_the_stage_before_not_a_branch_inside():
    """At 32 px ResNet's layer4 and MobileNet's last blocks are 1 x 1 (a constant map): the
    default is the last stage with a map, never a layer inside a downsampling block."""
    assert default_cam_layer(_torchvision("resnet18", 32)) == "layer3"
    torch.manual_seed(0)
    mobile = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=4)
    assert default_cam_layer(Model.from_module(mobile, input_size=32)) == "features.13"


class SharedReLU(nn.Module):
    """A user's module: one ReLU and one pool called after both convs, a functional flatten,
    a non-square grey input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 10 * 30, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


@pytest.mark.slow
def test_a_layer_called_twice_is_not_the_default_and_score_cam_agrees():
    """``pool`` names two outputs (a truncated forward stops at the first): the default is
    the last layer that names one, and every CAM reads that same layer."""
    torch.manual_seed(0)
    model = Model.from_module(SharedReLU(), input_size=(40, 120), channels=1)
    assert default_cam_layer(model) == "conv2"
    x = torch.rand(1, 1, 40, 120, generator=torch.Generator().manual_seed(1))
    for method in (GradCAM(model), ScoreCAM(model)):
        maps = method.attribute(x, [2])
        assert maps.shape == (1, 1, 20, 60) and method.last_run["layer"] == "conv2"


def test_a_block_that_ends_in_adaptive_pooling_gives_the_layer_before(tiny):
    """tiny's ``features`` ends with AdaptiveAvgPool2d(2), the head's resize: its output (2 x 2)
    is not the last stage's, the ReLU before the pooling (16 x 16) is."""
    layer, why = cam_layer(tiny)
    assert layer == "features.4" and "16x16x16 maps" in why


def test_a_model_without_maps_is_refused_in_one_sentence():
    model = Model.from_module(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), input_size=8)
    with pytest.raises(ConvsightError, match="no layer with N x C x H x W maps"):
        cam_layer(model)


@pytest.mark.slow
def test_saliency_json_records_the_layer_and_why(shared, tmp_path):
    model = _torchvision("resnet18", 64)
    photo = sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))[0]
    cases = ((None, "layer4", "default: the last stage"), ("layer3", "layer3", "given"))
    for given, layer, reason in cases:
        out = tmp_path / str(given)
        request = SaliencyRequest([photo], methods=["gradcam"], layer=given)
        write_saliency(model, request, out=out, show_progress=False)
        entry = json.loads((out / "saliency.json").read_text())["methods"]["gradcam"]
        assert entry["options"]["layer"] == layer
        assert entry["run"]["layer"] == layer and entry["run"]["layer_reason"].startswith(reason)
