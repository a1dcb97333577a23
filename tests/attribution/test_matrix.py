"""The same maps as captum, method by method, on the models people bring.

One table of methods (each: our options, captum's call with the same definitions: baseline,
absolute value, channel reduction) run over a table of models: captum's tutorial CNN (a
``x.view(x.size(0), -1)`` head, so channels-last must not be used) and timm's ResNet-18 (random
weights, 64 px; ReLUs in place and ``x += shortcut`` after the last batch norm of each block).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from convsight.attribution import get_method
from convsight.layers import get_layer
from convsight.models import Model, ModelCard
from tests.conftest import hook_count


class TutorialCNN(nn.Module):
    """captum's CIFAR-10 tutorial network: conv-relu-pool twice, ``view``, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(self.relu3(self.fc1(x)))


def _card(name: str, size: int, classes: int) -> ModelCard:
    return ModelCard(
        name=name,
        arch=f"test:{name}",
        input_size=(size, size),
        channels=3,
        mean=(0.5, 0.4, 0.3),
        std=(0.25, 0.2, 0.3),
        labels=[f"class{i}" for i in range(classes)],
    )


def tutorial_cnn() -> Model:
    torch.manual_seed(0)
    return Model(TutorialCNN(), _card("tutorial-cnn", 32, 10))


def timm_resnet18() -> Model:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=5, zero_init_last=False)
    for m in net.modules():  # batch-norm statistics that matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return Model(net, _card("timm-resnet18", 64, 5))


@dataclass
class ModelCase:
    build: Callable[[], Model]
    memory_format: str  # the layout the methods must choose
    cam_layers: list[str]  # conv layers, and layers an in-place operation follows
    occlusion: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "tutorial-cnn": ModelCase(
        tutorial_cnn, "contiguous", ["conv1", "conv2"], {"window": 6, "stride": 4}
    ),
    "timm-resnet18": ModelCase(
        timm_resnet18,
        "channels_last",
        ["layer4", "layer4.1.bn2", "layer3.0.conv1", "layer1.1.bn2"],
        {"window": 16, "stride": 12},
    ),
}


class Pixels(nn.Module):
    """Pixels in, logits out: what captum is given (convsight normalizes through the card)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.net = model.module
        self.card = model.card

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(self.card.normalize(p))


def _saliency(model, x, t, options):
    from captum.attr import Saliency

    return Saliency(Pixels(model)).attribute(x, target=t, abs=True)


def _ixg(model, x, t, options):
    from captum.attr import InputXGradient

    return InputXGradient(Pixels(model)).attribute(x, target=t)


def _ig(model, x, t, options):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(Pixels(model)).attribute(
        x, target=t, n_steps=options["steps"], method="gausslegendre", baselines=0.0
    )


def _smoothgrad(model, x, t, options):
    from captum.attr import NoiseTunnel, Saliency

    torch.manual_seed(7)  # ours draws the same noise from the same seed (see test below)
    return NoiseTunnel(Saliency(Pixels(model))).attribute(
        x, nt_type="smoothgrad", nt_samples=options["samples"], stdevs=options["stdev"], target=t
    )


def _guided(model, x, t, options):
    from captum.attr import GuidedBackprop

    return GuidedBackprop(Pixels(model)).attribute(x, target=t)


def _deconvnet(model, x, t, options):
    from captum.attr import Deconvolution

    return Deconvolution(Pixels(model)).attribute(x, target=t)


def _occlusion(model, x, t, options):
    from captum.attr import Occlusion

    w, s = options["window"], options["stride"]
    return Occlusion(Pixels(model)).attribute(
        x,
        sliding_window_shapes=(3, w, w),
        strides=(3, s, s),
        baselines=0.0,
        target=t,
        perturbations_per_eval=16,
    )


# method: (our options, captum with the same definitions, tolerance (rtol, atol))
METHODS: dict[str, tuple[dict[str, Any], Callable, tuple[float, float]]] = {
    "saliency": ({}, _saliency, (1e-4, 1e-6)),
    "ixg": ({}, _ixg, (1e-4, 1e-6)),
    "ig": ({"steps": 8, "batch_size": 5}, _ig, (1e-4, 1e-6)),
    "smoothgrad": ({"samples": 3, "stdev": 0.1, "batch_size": 4}, _smoothgrad, (1e-4, 1e-6)),
    "guided": ({}, _guided, (1e-4, 1e-6)),
    "deconvnet": ({}, _deconvnet, (1e-4, 1e-6)),
    "occlusion": ({"batch_size": 9}, _occlusion, (1e-4, 1e-5)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request) -> tuple[ModelCase, Model]:
    spec = MODELS[request.param]
    return spec, spec.build()


def _pixels(model: Model, n: int = 2) -> torch.Tensor:
    h, w = model.card.input_size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float, atol: float) -> None:
    ours, theirs = ours.detach().float(), theirs.detach().float()
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = float(theirs.abs().max())
    assert scale > 0, "a map of zeros proves nothing"
    err = float((ours - theirs).abs().max())
    assert err <= atol + rtol * scale, f"max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_matches_captum(case, name):
    spec, model = case
    options, theirs, (rtol, atol) = METHODS[name]
    if name == "occlusion":
        options = {**options, **spec.occlusion}
    x, t = _pixels(model), [1, 4]
    method = get_method(name, model)
    torch.manual_seed(7)
    ours = method.attribute(x, t, **options)
    _close(ours, theirs(model, x, t, options), rtol, atol)
    # how it ran: the layout chosen for this model, no engine fallback; occlusion by
    # incremental inference (had it fallen back to the module, captum's map would match
    # trivially), every other method by the module itself
    assert method.last_run["memory_format"] == spec.memory_format
    assert method.last_run["fallback"] is None
    engine = "incremental" if name == "occlusion" else "eager"
    assert method.last_run["requested_engine"] == method.engine_used == engine
    assert hook_count(model.module) == 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gradcam_matches_captum_layer_gradcam_at_every_layer(case):
    """Including layers an in-place operation follows (``layer4.1.bn2``: ``x += shortcut``)."""
    from captum.attr import LayerGradCam

    spec, model = case
    x, t = _pixels(model), [3, 0]
    method = get_method("gradcam", model)
    for layer in spec.cam_layers:
        expected = LayerGradCam(Pixels(model), get_layer(model.module, layer)).attribute(
            x, target=t, relu_attributions=True
        )
        _close(method.attribute(x, t, layer=layer), expected, 1e-4, 1e-6)
    assert hook_count(model.module) == 0


@pytest.mark.slow
def test_the_tutorial_cnn_runs_contiguous_and_says_why():
    model = tutorial_cnn()
    x = _pixels(model)
    method = get_method("saliency", model)
    method.attribute(x, 0)
    note = method.last_run["memory_format_note"]
    assert note.startswith("the network fails in channels-last layout (RuntimeError: view size")
    # the decision is kept: no probe on the next call
    calls = []
    handle = model.module.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        method.attribute(x, 0)
    finally:
        handle.remove()
    assert calls == [2]
