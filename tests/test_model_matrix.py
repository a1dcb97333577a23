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
from convsight.studies.atlas import build_atlas  # noqa: E402
from convsight.studies.attribution import write_evaluation, write_saliency  # noqa: E402
from convsight.studies.mnist import write_activations  # noqa: E402
from convsight.studies.optvis import classviz, maximize  # noqa: E402
from tests.conftest import TinyNet, hook_count  # noqa: E402
from tests.test_attribution_matrix import TutorialCNN  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


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

    from tests.test_keras import study_cnn

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    path = tmp / "mnist_cnn.keras"
    study_cnn().save(path)
    return load_model(str(path))


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
}

TASKS = (
    "layers",
    "activations",
    "maximize",
    "classviz",
    "attribution",  # every method but the two that change how gradients pass ReLUs
    "rectifier",  # guided backprop and DeconvNet
    "evaluate",
    "atlas",
)
RECTIFIER_METHODS = ("guided", "deconvnet")

# (model, task) -> the one-sentence error the README promises instead of a result.
_NO_RELU = "runs none, so its map would be the plain gradient; use saliency instead"
REFUSED: dict[tuple[str, str], str] = {
    ("timm-convnext_atto", "rectifier"): _NO_RELU,  # GELU
    ("timm-efficientnet_b0", "rectifier"): _NO_RELU,  # SiLU
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
        write_activations(model, image=images[0], layers=[layer], out=out)
        summary = json.loads((out / "activations.json").read_text())
        assert summary["layers"][0]["layer"] == layer
        _finite_npz(out / "activations.npz")
    elif task == "maximize":
        summary = maximize(model, layer, [0, 1], flags={"steps": 2}, out=out, show_progress=False)
        assert [row["name"] for row in summary["channels"]] == ["0", "1"]
        images_npz = _finite_npz(out / "images.npz")["images"]
        assert images_npz.shape == (2, model.card.channels, h, w)
    elif task == "classviz":
        classviz(model, [0, 1], flags={"steps": 2}, out=out, show_progress=False)
        _finite_npz(out / "images.npz")
        _finite_json(json.loads((out / "summary.json").read_text()))
    elif task in ("attribution", "rectifier"):
        rectifier = task == "rectifier"
        methods = [m for m in METHODS if (m in RECTIFIER_METHODS) == rectifier]
        write_saliency(
            model,
            images[:1],
            methods=methods,
            layer=None if rectifier else layer,  # a layer is for the CAMs only
            ig_steps=4,
            smoothgrad_samples=2,
            out=out,
            show_progress=False,
        )
        maps = _finite_npz(out / "saliency.npz")
        summary = json.loads((out / "saliency.json").read_text())
        for method in methods:
            assert any(key.startswith(method) for key in maps), method
        _finite_json(summary)
    elif task == "evaluate":
        write_evaluation(
            model,
            folder,
            methods=["saliency", "gradcam"],
            metrics=("deletion",),
            layer=layer,
            step=max(h * w // 8, 1),
            out=out,
            show_progress=False,
        )
        result = json.loads((out / "evaluation.json").read_text())
        _finite_json(result)
        assert "deletion" in json.dumps(result)
    elif task == "atlas":
        build_atlas(
            model,
            [layer],
            out,
            channels=[0, 1],
            dataset=folder,
            top_k=2,
            presets=("robust",),
            steps=2,
            show_progress=False,
        )
        atlas = json.loads((out / "atlas.json").read_text())
        _finite_json(atlas)
        assert (out / "index.html").is_file()
    else:  # pragma: no cover - the table and this function go together
        raise AssertionError(task)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("built", list(CASES), indirect=True)
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
