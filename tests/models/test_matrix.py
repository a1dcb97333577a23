"""Every kind of model people bring x every task convsight offers.

The Captum habit: one table of models, one table of tasks, every cell run. A cell passes when
the task runs from the library entry point a user calls (a :class:`Model` or a file spec, no
hand-written card) and writes finite results, or when it fails with the one-sentence error
listed in :data:`REFUSED` (none today: every cell must run).

Models: the seed networks, a torchvision ResNet-18 with a new 3-class head, timm ResNet-18 /
ConvNeXt / EfficientNet (random weights, 64 px), captum's tutorial CNN (``x.view`` after a
conv), a 1 x 64 x 128 spectrogram CNN, an ONNX export and the study's Keras MNIST CNN.
Tasks: layers, activations, maximize (2 channels, 2 steps), classviz, every attribution
method, evaluate (deletion) and an atlas of one layer.

Round two (the kinds users brought, issue 25): a DenseNet-121 state dict with no card, MobileNet
v3 in ONNX at opset 17 with a dynamic batch, a Keras functional model with a softmax head, nets
whose forward returns a tuple or a dict, a grey 1 x 40 x 120 flatten -> Linear spectrogram CNN,
timm RegNetX-200MF, a ResNet-18 in ``.safetensors`` with a labels file and a net that normalizes
inside; each with the user's labels, on the tasks and methods the issue names for them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported, as the loader does

from convsight.attribution import METHODS  # noqa: E402
from convsight.errors import ConvsightError  # noqa: E402
from convsight.layers import describe_layers  # noqa: E402
from convsight.models import Model, load_model  # noqa: E402
from convsight.optvis.settings import settings_for  # noqa: E402
from convsight.studies.atlas import AtlasRequest, build_atlas  # noqa: E402
from convsight.studies.evaluation import EvaluationRequest, write_evaluation  # noqa: E402
from convsight.studies.mnist import ActivationsRequest, write_activations  # noqa: E402
from convsight.studies.optvis import (  # noqa: E402
    ClassvizRequest,
    MaximizeRequest,
    classviz,
    maximize,
)
from convsight.studies.saliency import SaliencyRequest, write_saliency  # noqa: E402
from tests.attribution.test_matrix import TutorialCNN  # noqa: E402
from tests.conftest import TinyNet, hook_count  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


class SpectrogramCNN(nn.Module):
    """An audio-style classifier: 1 x 64 x 128 log-mel input, two conv blocks, global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


@dataclass
class Case:
    build: Callable[[Path], Model]  # given a scratch folder (for the file kinds)
    layer: str  # a conv layer for activations, maximize, the CAMs and the atlas
    methods: tuple[str, ...] | None = None  # the attribution methods run (None: all)
    tasks: tuple[str, ...] | None = None  # the tasks run (None: all of TASKS)


def _seed(name: str) -> Callable[[Path], Model]:
    def build(_tmp: Path) -> Model:
        torch.manual_seed(0)
        return load_model(name)  # the study's network, untrained

    return build


def _tiny(_tmp: Path) -> Model:
    torch.manual_seed(0)
    return Model.from_module(TinyNet(), input_size=32, mean=0.5, std=0.25)


def _torchvision_new_head(_tmp: Path) -> Model:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    return Model.from_module(net, input_size=64, labels=["cat", "dog", "fox"])


def _timm(name: str) -> Callable[[Path], Model]:
    def build(_tmp: Path) -> Model:
        from convsight.models.timm_source import build_timm, timm_card

        torch.manual_seed(0)
        net = build_timm(name, num_classes=5)
        return Model(net, timm_card(name, net).updated(input_size=64))

    return build


def _tutorial(_tmp: Path) -> Model:
    torch.manual_seed(0)
    return Model.from_module(TutorialCNN(), input_size=32, mean=0.5, std=0.25)


def _spectrogram(_tmp: Path) -> Model:
    torch.manual_seed(0)
    return Model.from_module(SpectrogramCNN(), input_size=(64, 128), channels=1)


def _onnx(tmp: Path) -> Model:
    torch.manual_seed(0)
    path = tmp / "tutorial.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(TutorialCNN().eval(), (torch.rand(1, 3, 32, 32),), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no mean/std in an ONNX file: the identity, warned
        return load_model(str(path))


def _keras(tmp: Path) -> Model:
    import keras

    from tests.models.test_keras import study_cnn

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    path = tmp / "mnist_cnn.keras"
    study_cnn().save(path)
    return load_model(str(path))


# --- round two: the kinds users brought (issue 25), each with random weights ------------------
# The methods the issue names for them (the full set runs on the first round's kinds).
ROUND_TWO_METHODS = ("saliency", "gradcam", "occlusion", "ig")
ROUND_TWO_TASKS = ("layers", "maximize", "classviz", "attribution", "atlas")
LABELS = ["siren", "horn", "bell", "drum"]  # the user's own labels, expected in every output


def _densenet_state_dict(tmp: Path) -> Model:
    """A DenseNet-121 state dict with no card: torchvision's architecture, the user's head."""
    import torchvision

    torch.manual_seed(0)
    path = tmp / "densenet.pt"
    torch.save(torchvision.models.densenet121(num_classes=4).state_dict(), path)
    fields = {"input_size": (32, 32), "labels": LABELS}
    return load_model("densenet121", weights=path, card_fields=fields)


def _mobilenet_v3_onnx(tmp: Path) -> Model:
    """MobileNet v3 exported to ONNX at opset 17 with a dynamic batch: the file fixes 64x64."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    path = tmp / "mobilenet_v3.onnx"
    axes = {"x": {0: "batch"}, "scores": {0: "batch"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.randn(2, 3, 64, 64),), str(path), input_names=["x"],
            output_names=["scores"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
        return load_model(str(path), card_fields={"labels": LABELS})


def keras_softmax_model():
    """A Keras 3 functional model with the usual softmax head (32x32 RGB in, 4 classes)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs)


def _keras_softmax(tmp: Path) -> Model:
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    path = tmp / "softmax_head.keras"
    keras_softmax_model().save(path)
    return load_model(str(path), card_fields={"labels": LABELS})


class TupleNet(TinyNet):
    """A research net whose forward returns (logits, features)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.classifier(features), features


class DictNet(TinyNet):
    """A research net whose forward returns {"logits": ..., "embedding": ...}."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"logits": self.classifier(features), "embedding": features.flatten(1)}


def _tuple_net(_tmp: Path) -> Model:
    torch.manual_seed(0)
    return Model.from_module(TupleNet(), input_size=32, mean=0.5, std=0.25, labels=LABELS, output=0)


def _dict_net(_tmp: Path) -> Model:
    torch.manual_seed(0)
    net = DictNet()
    return Model.from_module(net, input_size=32, mean=0.5, std=0.25, labels=LABELS, output="logits")


class FlatSpectrogramCNN(nn.Module):
    """A grey 1 x 40 x 120 spectrogram CNN: adaptive pooling to a fixed grid, then
    flatten -> Linear (the head takes one size only)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 12)),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _flat_spectrogram(_tmp: Path) -> Model:
    torch.manual_seed(0)
    net = FlatSpectrogramCNN()
    return Model.from_module(net, input_size=(40, 120), channels=1, labels=LABELS)


def _resnet_safetensors(tmp: Path) -> Model:
    """A ResNet-18 in ``.safetensors`` with a labels file."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp / "resnet.safetensors"
    save_file(torchvision.models.resnet18(num_classes=4).state_dict(), str(path))
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    from convsight.models.labels import read_labels

    fields = {"input_size": (32, 32), "labels": read_labels(labels)}
    return load_model("resnet18", weights=path, card_fields=fields)


class NormalizingNet(TinyNet):
    """Normalization inside the model: it takes pixels in [0, 1] (card mean 0, std 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - 0.45) / 0.225)


def _normalization_inside(_tmp: Path) -> Model:
    torch.manual_seed(0)
    return Model.from_module(NormalizingNet(), input_size=32, labels=LABELS)


CASES: dict[str, Case] = {
    "seed-mnist-cnn": Case(_seed("mnist-cnn"), "features.3"),
    "seed-five-class-cnn": Case(_seed("five-class-cnn"), "features.4"),
    "tiny-from-module": Case(_tiny, "features.3"),
    "torchvision-resnet18-3-classes": Case(_torchvision_new_head, "layer2.0.conv1"),
    "timm-resnet18": Case(_timm("resnet18"), "layer2.0.conv1"),
    "timm-convnext_atto": Case(_timm("convnext_atto"), "stages.1.blocks.0.conv_dw"),
    "timm-efficientnet_b0": Case(_timm("efficientnet_b0"), "blocks.1.0.conv_pw"),
    "tutorial-cnn-view": Case(_tutorial, "conv2"),
    "spectrogram-1x64x128": Case(_spectrogram, "conv2"),
    "onnx-export": Case(_onnx, "node_conv2d_1"),
    "keras-mnist-cnn": Case(_keras, "conv2d_1"),
    "densenet121-state-dict": Case(
        _densenet_state_dict,
        "features.denseblock1.denselayer1.conv1",
        ROUND_TWO_METHODS,
        ROUND_TWO_TASKS,
    ),
    "onnx-mobilenet_v3-opset17": Case(
        _mobilenet_v3_onnx,
        "features/features/1/block/block/0/block/0/0/Conv",
        ROUND_TWO_METHODS,
        ROUND_TWO_TASKS,
    ),
    "keras-softmax-head": Case(_keras_softmax, "conv_b", ROUND_TWO_METHODS, ROUND_TWO_TASKS),
    "tuple-output-net": Case(_tuple_net, "features.3", ROUND_TWO_METHODS, ROUND_TWO_TASKS),
    "dict-output-net": Case(_dict_net, "features.3", ROUND_TWO_METHODS, ROUND_TWO_TASKS),
    "flat-spectrogram-1x40x120": Case(
        _flat_spectrogram, "features.3", ROUND_TWO_METHODS, ROUND_TWO_TASKS
    ),
    "timm-regnetx_002": Case(
        _timm("regnetx_002"), "s2.b1.conv1.conv", ROUND_TWO_METHODS, ROUND_TWO_TASKS
    ),
    "resnet18-safetensors-labels": Case(
        _resnet_safetensors, "layer2.0.conv1", ROUND_TWO_METHODS, ROUND_TWO_TASKS
    ),
    "normalization-inside": Case(
        _normalization_inside, "features.3", ROUND_TWO_METHODS, ROUND_TWO_TASKS
    ),
}

TASKS = (
    "layers",
    "activations",
    "maximize",
    "classviz",
    "attribution",  # every method but the two that change how gradients pass ReLUs
    "rectifier",  # guided backprop and DeconvNet
    "lrp",  # LRP, refused where a layer has no rule in zennit
    "evaluate",
    "atlas",
)
RECTIFIER_METHODS = ("guided", "deconvnet")
APART = {"rectifier": RECTIFIER_METHODS, "lrp": ("lrp",)}  # methods with a task of their own

# (model, task) -> the one-sentence error the README promises instead of a result.
_NO_RELU = "runs none, so its map would be the plain gradient; use saliency instead"
REFUSED: dict[tuple[str, str], str] = {
    ("timm-convnext_atto", "rectifier"): _NO_RELU,  # GELU
    ("timm-efficientnet_b0", "rectifier"): _NO_RELU,  # SiLU
    ("timm-convnext_atto", "lrp"): r"no rule for layer 'stem.1' \(LayerNorm2d\)",
    # its squeeze-excite pools in code (x.mean((2, 3))): no LRP rule covers that
    ("timm-efficientnet_b0", "lrp"): r"pools in its own code \(mean in SqueezeExcite.forward\)",
    ("spectrogram-1x64x128", "lrp"): r"pools in its own code \(mean in SpectrogramCNN.forward\)",
    ("onnx-export", "lrp"): r"LRP has no rule for layer '.*' \(Onnx",
    ("keras-mnist-cnn", "lrp"): r"no rule for layer 'flatten' \(KerasFlatten\)",
}


@pytest.fixture(scope="module")
def photos(shared: Path) -> list[Path]:
    return sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))[:3]


_BUILT: dict[str, tuple[Model, Path]] = {}


@pytest.fixture
def built(request, tmp_path_factory, photos) -> tuple[str, Case, Model, Path]:
    """The model of a cell (built once per module) and a folder of real photos at its size."""
    name = request.param
    case = CASES[name]
    if name not in _BUILT:
        tmp = tmp_path_factory.mktemp(name)
        model = case.build(tmp)
        folder = tmp / "images"
        folder.mkdir()
        h, w = model.card.input_size
        mode = "L" if model.card.channels == 1 else "RGB"
        for photo in photos:
            with Image.open(photo) as image:
                image.convert(mode).resize((w, h)).save(folder / f"{photo.stem}.png")
        _BUILT[name] = (model, folder)
    model, folder = _BUILT[name]
    return name, case, model, folder


def _finite_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), f"{path.name}: {key} is not finite"
    return arrays


def _finite_json(value) -> None:
    """No NaN / infinity anywhere (they are written as null, so a null number is one)."""
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            _finite_json(item)
    elif isinstance(value, list):
        for item in value:
            _finite_json(item)


def run_task(task: str, case: Case, model: Model, folder: Path, out: Path) -> None:
    images = sorted(folder.iterdir())
    h, w = model.card.input_size
    layer = case.layer
    if task == "layers":
        rows = describe_layers(model.module, torch.zeros(1, model.card.channels, h, w))
        shapes = {row.name: row.output_shape for row in rows}
        assert shapes[layer] is not None and len(shapes[layer]) == 3
        assert sum(row.type == "Conv2d" for row in rows) >= 1
    elif task == "activations":
        write_activations(model, ActivationsRequest(image=images[0], layers=[layer]), out)
        summary = json.loads((out / "activations.json").read_text())
        assert summary["layers"][0]["layer"] == layer
        _finite_npz(out / "activations.npz")
    elif task == "maximize":
        request = MaximizeRequest(layer, [0, 1], settings_for(steps=2))
        summary = maximize(model, request, out=out, show_progress=False).to_json()
        assert [row["name"] for row in summary["channels"]] == ["0", "1"]
        images_npz = _finite_npz(out / "images.npz")["images"]
        assert images_npz.shape == (2, model.card.channels, h, w)
    elif task == "classviz":
        request = ClassvizRequest([0, 1], settings_for("robust", "class", steps=2))
        classviz(model, request, out=out, show_progress=False)
        _finite_npz(out / "images.npz")
        _finite_json(json.loads((out / "summary.json").read_text()))
    elif task in ("attribution", "rectifier", "lrp"):
        apart = {m for ms in APART.values() for m in ms}
        methods = list(APART.get(task, [m for m in METHODS if m not in apart]))
        if case.methods is not None and task == "attribution":
            methods = [m for m in methods if m in case.methods]
        request = SaliencyRequest(
            images[:1],
            methods=methods,
            layer=layer if task == "attribution" else None,  # a layer is for the CAMs only
            ig_steps=4,
            smoothgrad_samples=2,
        )
        write_saliency(model, request, out=out, show_progress=False)
        maps = _finite_npz(out / "saliency.npz")
        summary = json.loads((out / "saliency.json").read_text())
        for method in methods:
            assert any(key.startswith(method) for key in maps), method
        _finite_json(summary)
        if model.card.labels == LABELS:  # the user's labels, not class numbers
            assert summary["targets"][0]["label"] in LABELS, summary["targets"]
    elif task == "evaluate":
        request = EvaluationRequest(
            folder,
            methods=["saliency", "gradcam"],
            metrics=("deletion",),
            layer=layer,
            step=max(h * w // 8, 1),
        )
        write_evaluation(model, request, out=out, show_progress=False)
        result = json.loads((out / "evaluation.json").read_text())
        _finite_json(result)
        assert "deletion" in json.dumps(result)
    elif task == "atlas":
        request = AtlasRequest(
            [layer],
            out,
            channels=[0, 1],
            dataset=folder,
            top_k=2,
            presets=("robust",),
            steps=2,
            show_progress=False,
        )
        build_atlas(model, request)
        atlas = json.loads((out / "atlas.json").read_text())
        _finite_json(atlas)
        assert (out / "index.html").is_file()
    else:  # pragma: no cover - the table and this function go together
        raise AssertionError(task)


CELLS = [(name, task) for name, case in CASES.items() for task in case.tasks or TASKS]


@pytest.mark.parametrize(("built", "task"), CELLS, indirect=["built"])
def test_every_model_kind_runs_every_task(built, task, tmp_path):
    name, case, model, folder = built
    out = tmp_path / "out"
    refused = REFUSED.get((name, task))
    if refused is None:
        run_task(task, case, model, folder, out)
    else:
        with pytest.raises(ConvsightError, match=refused) as error:
            run_task(task, case, model, folder, out)
        assert "\n" not in str(error.value)
    assert hook_count(model.module) == 0  # every hook removed, whatever happened
    assert not any(p.requires_grad for p in model.module.parameters())
