"""The kinds of model users brought (issue 25), built as a user would, from the command line:
layers, maximize, classviz, saliency (saliency, Grad-CAM, occlusion, IG) and a one-layer
atlas, with the user's labels in every output and no card written by hand. The same kinds run
from Python in :mod:`tests.models.test_matrix`."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported, as the loader does

from convsight.cli import app  # noqa: E402
from tests.models.test_matrix import LABELS, keras_softmax_model  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]
runner = CliRunner()

# The user's own architectures, in a file of their own (as `--arch net.py:Class` names them).
NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Small(nn.Module):
        def __init__(self, classes: int = 4, channels: int = 3) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))

        def forward(self, x):
            return self.classifier(self.pool(self.features(x)))


    class TupleNet(Small):
        def forward(self, x):
            features = self.pool(self.features(x))
            return self.classifier(features), features


    class DictNet(Small):
        def forward(self, x):
            features = self.pool(self.features(x))
            return {"logits": self.classifier(features), "embedding": features.flatten(1)}


    class NormalizingNet(Small):
        def forward(self, x):
            return super().forward((x - 0.45) / 0.225)


    class FlatSpectrogramCNN(nn.Module):
        def __init__(self, classes: int = 4) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 12)),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 12, classes))

        def forward(self, x):
            return self.head(self.features(x))
    """
)


def _state_dict(folder: Path, name: str, module: torch.nn.Module) -> Path:
    path = folder / f"{name}.pt"
    torch.save(module.state_dict(), path)
    return path


def _user_class(folder: Path, name: str) -> torch.nn.Module:
    namespace: dict = {}
    exec(compile(NET_PY, str(folder / "net.py"), "exec"), namespace)  # the user's own file
    return namespace[name]()


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, shared) -> tuple[dict[str, tuple[list[str], str]], Path, Path]:
    """Each kind's model arguments (files as a user has them) and a conv layer; a photo and a
    folder of photos."""
    import keras
    import torchvision
    from safetensors.torch import save_file

    from convsight.models.timm_source import build_timm

    folder = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    (folder / "net.py").write_text(NET_PY)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    net = str(folder / "net.py")
    own = ["--input-size", "32", "--mean", "0.5", "--std", "0.25"]
    save_file(
        torchvision.models.resnet18(num_classes=4).state_dict(), folder / "resnet.safetensors"
    )
    save_file(build_timm("regnetx_002", num_classes=4).state_dict(), folder / "regnet.safetensors")
    onnx = folder / "mobilenet_v3.onnx"
    from tests.models.test_matrix import _mobilenet_v3_onnx

    _mobilenet_v3_onnx(folder)  # writes mobilenet_v3.onnx
    keras.utils.set_random_seed(0)
    keras_softmax_model().save(folder / "softmax_head.keras")
    dense = _state_dict(folder, "densenet", torchvision.models.densenet121(num_classes=4))
    built = {
        "densenet121-state-dict": (
            ["densenet121", "--weights", str(dense), "--input-size", "32"],
            "features.denseblock1.denselayer1.conv1",
        ),
        "onnx-mobilenet_v3-opset17": ([str(onnx)], "features/features/0/features/0/0/Conv"),
        "keras-softmax-head": ([str(folder / "softmax_head.keras")], "conv_b"),
        "tuple-output-net": (
            [
                str(_state_dict(folder, "tuple", _user_class(folder, "TupleNet"))),
                "--arch",
                f"{net}:TupleNet",
                *own,
                "--output",
                "0",
            ],
            "features.3",
        ),  # fmt: skip
        "dict-output-net": (
            [
                str(_state_dict(folder, "dict", _user_class(folder, "DictNet"))),
                "--arch",
                f"{net}:DictNet",
                *own,
                "--output",
                "logits",
            ],
            "features.3",
        ),  # fmt: skip
        "flat-spectrogram-1x40x120": (
            [
                str(_state_dict(folder, "spec", _user_class(folder, "FlatSpectrogramCNN"))),
                "--arch",
                f"{net}:FlatSpectrogramCNN",
                "--input-size",
                "40x120",
                "--mean",
                "0.5",
                "--std",
                "0.25",
            ],
            "features.3",
        ),  # fmt: skip
        "timm-regnetx_002": (
            [
                "timm:regnetx_002",
                "--weights",
                str(folder / "regnet.safetensors"),
                "--input-size",
                "32",
            ],
            "s2.b1.conv1.conv",
        ),  # fmt: skip
        "resnet18-safetensors-labels": (
            ["resnet18", "--weights", str(folder / "resnet.safetensors"), "--input-size", "32"],
            "layer2.0.conv1",
        ),
        "normalization-inside": (
            [
                str(_state_dict(folder, "norm", _user_class(folder, "NormalizingNet"))),
                "--arch",
                f"{net}:NormalizingNet",
                "--input-size",
                "32",
                "--mean",
                "0",
                "--std",
                "1",
            ],
            "features.3",
        ),  # fmt: skip
    }
    photos = folder / "photos"
    photos.mkdir()
    for sample in sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))[:2]:
        with Image.open(sample) as image:  # ordinary photos, ~500x375, any model's size
            image.save(photos / f"{sample.stem}.jpg")
    specs = {
        name: ([*args, "--labels", str(labels)], layer) for name, (args, layer) in built.items()
    }
    return specs, next(photos.iterdir()), photos


def convsight(*args) -> None:
    result = runner.invoke(
        app, [str(a) for a in args], prog_name="convsight", env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, (args, result.output)
    return result


TASKS = ("layers", "maximize", "classviz", "saliency", "atlas")


KINDS = (
    "densenet121-state-dict", "onnx-mobilenet_v3-opset17", "keras-softmax-head",
    "tuple-output-net", "dict-output-net", "flat-spectrogram-1x40x120", "timm-regnetx_002",
    "resnet18-safetensors-labels", "normalization-inside",
)  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_from_the_command_line(kinds, kind, task, tmp_path):
    specs, photo, photos = kinds
    model, layer = specs[kind]
    model_arg, flags = model[0], model[1:]
    out = tmp_path / "out"
    if task == "layers":
        result = convsight("layers", model_arg, *flags)
        assert layer in result.output
    elif task == "maximize":
        convsight("maximize", model_arg, *flags, "--layer", layer, "--channels", "0-1",
                  "--steps", "2", "--quiet", "--out", out)  # fmt: skip
        assert len(json.loads((out / "summary.json").read_text())["channels"]) == 2
    elif task == "classviz":
        convsight("classviz", model_arg, *flags, "--classes", "horn,drum", "--steps", "2",
                  "--quiet", "--out", out)  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        assert [row["name"] for row in summary["classes"]] == ["horn", "drum"]
        assert all(row["model_top1"] in LABELS for row in summary["classes"])
    elif task == "saliency":
        convsight("saliency", model_arg, *flags, "--image", photo, "--methods",
                  "saliency,gradcam,occlusion,ig", "--ig-steps", "4", "--quiet",
                  "--out", out)  # fmt: skip
        summary = json.loads((out / "saliency.json").read_text())
        assert set(summary["methods"]) == {"saliency", "gradcam", "occlusion", "ig"}
        assert summary["targets"][0]["label"] in LABELS
        assert summary["predicted"][0]["label"] in LABELS
    else:
        convsight("atlas", model_arg, *flags, "--layers", layer, "--channels", "0-1",
                  "--steps", "2", "--presets", "paper", "--dataset", photos, "--top-k", "2",
                  "--quiet", "--out", out)  # fmt: skip
        assert (out / "index.html").is_file()
        assert json.loads((out / "atlas.json").read_text())["dataset_size"] == 2
