"""The models people bring (issue 25, part c): the input size read from the file, photos
resized for every model, and forwards that return more than one tensor."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from convsight.attribution import METHODS
from convsight.cli import app
from convsight.data.images import load_image, load_image_tensor, skipped_reasons, to_model_pixels
from convsight.errors import ConvsightError
from convsight.layers import layer_names, output_shapes
from convsight.models import Model, ModelCard, load_model
from convsight.studies.atlas import AtlasRequest
from convsight.studies.atlas.inputs import check_inputs

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *fragments: str) -> str:
    """The one-line error of a refused command (exit 2), which says every fragment (a card
    warning may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.rstrip().endswith(lines[0]), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


class ConvNet(nn.Module):
    """A small RGB classifier that takes any input size (global pooling before the head)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, classes)

    def scores_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.features(x)
        return self.head(maps.mean((2, 3))), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores_and_maps(x)[0]


class TupleNet(ConvNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores_and_maps(x)


class DictNet(ConvNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, maps = self.scores_and_maps(x)
        return {"logits": logits, "features": maps}


class Scores:
    """A HuggingFace-style output: the scores as ``.logits``."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor) -> None:
        self.logits, self.hidden = logits, hidden


class ObjectNet(ConvNet):
    def forward(self, x: torch.Tensor) -> Scores:
        return Scores(*self.scores_and_maps(x))


def export_onnx(module: nn.Module, path: Path, outputs: list[str]) -> Path:
    """``module`` as ONNX for 96x96 RGB input with a dynamic batch (the TorchScript exporter,
    the fast one)."""
    axes = {name: {0: "batch"} for name in ["x", *outputs]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.randn(2, 3, 96, 96),), str(path), input_names=["x"],
            output_names=outputs, dynamic_axes=axes, dynamo=False,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """An ordinary 500x375 photo (random colours, so that a resize changes every pixel)."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8), "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def onnx_96(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "fixed96.onnx"
    return export_onnx(ConvNet(), path, ["scores"])


@pytest.fixture(scope="module")
def onnx_two_outputs(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "two.onnx"
    return export_onnx(TupleNet(), path, ["logits", "features"])


def saliency(model, photo: Path, out: Path, *flags):
    return run(
        "saliency", model, "--image", photo, "--methods", "saliency", "--out", out, "--quiet",
        *flags,
    )  # fmt: skip


@pytest.mark.slow
def test_onnx_input_size_comes_from_the_file_and_photos_are_resized(onnx_96, photo, tmp_path):
    with pytest.warns(UserWarning, match="no mean/std"):
        model = load_model(str(onnx_96))
    assert model.card.input_size == (96, 96) and model.card.resize == round(96 * 256 / 224)
    assert load_image_tensor(photo, model.card).shape == (1, 3, 96, 96)
    result = saliency(onnx_96, photo, tmp_path / "sal")
    assert result.exit_code == 0, result.output
    arrays = np.load(tmp_path / "sal" / "saliency.npz")
    assert arrays["saliency_attributions"].shape == (1, 3, 96, 96)
    # --resize none asks for images of exactly the input size, and the refusal names the flag.
    out = tmp_path / "exact"
    refused(saliency(onnx_96, photo, out, "--resize", "none"), "takes exactly 96x96", "--resize")
    assert not out.exists()


@pytest.mark.slow
def test_onnx_dynamic_dims(onnx_96, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from convsight.models.convert.onnx_graph import dims

    for batch in ("batch", -1, 0):  # a symbolic, a -1 and an unset batch: the size is still read
        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 96, 80])
        assert dims(value) == [None, 3, 96, 80]
    graph = onnx.load(str(onnx_96))
    shape = graph.graph.input[0].type.tensor_type.shape.dim
    shape[2].dim_param, shape[3].dim_param = "height", "width"
    path = tmp_path / "any_size.onnx"
    onnx.save(graph, str(path))
    refused(run("layers", path), "any height and width", "--input-size HxW")
    result = run("layers", path, "--input-size", "64", "--mean", "0", "--std", "1")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_keras_input_size_comes_from_the_channels_last_shape(photo, tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((96, 80, 3)),  # height 96, width 80, RGB: channels last
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    path = tmp_path / "net.keras"
    net.save(path)
    with pytest.warns(UserWarning, match="no mean/std"):
        model = load_model(str(path))
    assert (model.card.input_size, model.card.channels, model.card.num_classes) == ((96, 80), 3, 5)
    assert model.card.resize == round(80 * 256 / 224)
    result = saliency(path, photo, tmp_path / "sal")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "sal" / "saliency.npz")["saliency_attributions"].shape == (
        1, 3, 96, 80,
    )  # fmt: skip


@pytest.mark.slow
def test_torchscript_records_no_input_size_so_it_needs_the_flag(photo, tmp_path):
    # A traced module's graph keeps no input shape once saved (its input is a plain Tensor),
    # so a TorchScript file without a card needs --input-size; then photos are resized too.
    torch.manual_seed(0)
    path = tmp_path / "net.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(ConvNet().eval(), torch.zeros(1, 3, 96, 96)), str(path))
    refused(saliency(path, photo, tmp_path / "none"), "--input-size")
    result = saliency(path, photo, tmp_path / "sal", "--input-size", "96", "--mean", "0.5")
    assert result.exit_code == 0, result.output


def test_a_32_pixel_model_takes_a_photo_resized_and_centre_cropped(photo):
    card = Model.from_module(ConvNet(), input_size=32).card
    assert card.resize == 32
    x = load_image_tensor(photo, card)
    image = load_image(photo)  # 500x375: the shorter side to 32, then the middle 32 columns
    small = image.resize((round(500 * 32 / 375), 32), Image.BILINEAR)
    left = (small.width - 32) // 2
    reference = np.asarray(small.crop((left, 0, left + 32, 32)), dtype=np.float32) / 255
    assert x.shape == (1, 3, 32, 32)
    assert np.abs(x[0].permute(1, 2, 0).numpy() - reference).max() <= 1 / 255 + 1e-6
    # A non-square input is covered without stretching: 500x375 scaled by 64/500, then the
    # middle 32 rows.
    wide = Model.from_module(ConvNet(), input_size=(32, 64)).card
    small = image.resize((64, 48), Image.BILINEAR)
    reference = np.asarray(small.crop((0, 8, 64, 40)), dtype=np.float32) / 255
    x = to_model_pixels(image, wide).permute(1, 2, 0).numpy()
    assert np.abs(x - reference).max() <= 1 / 255 + 1e-6


def test_mnist_takes_a_28_pixel_digit_exactly_and_a_photo_resized(photo, tmp_path):
    card = load_model("mnist-cnn").card
    digit = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(digit, "L").save(path)
    x = load_image_tensor(path, card)
    assert torch.equal(x, torch.from_numpy(digit.astype(np.float32) / 255)[None, None])
    assert load_image_tensor(photo, card).shape == (1, 1, 28, 28)  # grey, resized, cropped
    with pytest.raises(ConvsightError, match="takes exactly 28x28 .*--resize auto"):
        load_image_tensor(photo, card.updated(resize=None))


@pytest.mark.slow
def test_resize_flag_and_card_field(tmp_path):
    card = load_model("mnist-cnn", card_fields={"resize": 40}).card
    assert card.resize == 40 and ModelCard.from_dict(card.to_dict()).resize == 40
    assert ModelCard.from_dict(card.to_dict() | {"output": None}).output is None
    refused(run("layers", "mnist-cnn", "--resize", "big"), "cannot read --resize 'big'")
    refused(run("layers", "mnist-cnn", "--resize", "20"), "input.resize", "shorter side (28)")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("net", "key", "listed"),
    [
        (TupleNet, 0, "a tuple of 2 parts (0: 1x5 tensor, 1: 1x4x32x32 tensor)"),
        (DictNet, "logits", "a dict of 2 parts ('logits': 1x5 tensor, 'features': 1x4x32x32"),
        (ObjectNet, "logits", "a Scores object with the attributes logits: 1x5 tensor, hidden"),
    ],
)
def test_outputs_that_are_not_a_tensor(net, key, listed):
    torch.manual_seed(0)
    module = net()
    with pytest.raises(ConvsightError, match="--output INDEX|KEY") as info:
        Model.from_module(module, input_size=32)
    assert listed in str(info.value) and "\n" not in str(info.value)

    model = Model.from_module(module, input_size=32, output=key)
    assert model.card.output == key and model.card.num_classes == 5
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = ConvNet.scores_and_maps(module, x)[0]
        assert torch.equal(model.module(x), expected)
        assert torch.equal(copy.deepcopy(model.module)(x), expected)  # surrogates copy it
    assert not isinstance(module(x), torch.Tensor)  # the user's module is left as it was
    assert layer_names(model.module) == layer_names(module) == ["features", "features.0",
                                                                 "features.1", "head"]  # fmt: skip
    assert output_shapes(model.module, ["features.1"], x) == {"features.1": (4, 32, 32)}
    maps = METHODS["saliency"](model).attribute(x, torch.tensor([1, 3]))
    assert maps.shape == x.shape and maps.abs().sum() > 0
    # torch.fx (occlusion's incremental engine) and torch.jit.trace (the frozen engine) see
    # the chosen part too, and a pickled module keeps it.
    for engine in ("incremental", "frozen"):
        occlusion = METHODS["occlusion"](model)
        occlusion.attribute(x[:1], 2, engine=engine, window=8, stride=8)
        assert occlusion.last_run["engine"] == engine, occlusion.last_run
    with torch.no_grad():
        assert torch.equal(pickle.loads(pickle.dumps(model.module))(x), expected)
    card = ModelCard.from_dict(json.loads(json.dumps(model.card.to_dict())))
    assert card.output == key


def test_output_on_a_tensor_or_a_missing_part_is_refused():
    with pytest.raises(ConvsightError, match="returns one 1x5 tensor, so it has no part 0"):
        Model.from_module(ConvNet(), input_size=32, output=0)
    with pytest.raises(ConvsightError, match="which has no part 'scores'"):
        Model.from_module(DictNet(), input_size=32, output="scores")
    with pytest.raises(ConvsightError, match="returns a 1x4x32x32 tensor .* not one row of 5"):
        Model.from_module(TupleNet(), input_size=32, output=1, num_classes=5)

    class Nested(ConvNet):
        def forward(self, x):
            logits, maps = self.scores_and_maps(x)
            return logits, (maps,)

    with pytest.raises(ConvsightError, match="part 1 of what model 'Nested' returns is a tuple"):
        Model.from_module(Nested(), input_size=32, output=1)
    with pytest.raises(ConvsightError, match="bad output"):
        Model.from_module(TupleNet(), input_size=32, output=1.5)


@pytest.mark.slow
def test_onnx_with_two_outputs_from_the_command_line(onnx_two_outputs, photo, tmp_path):
    out = tmp_path / "sal"
    refused(
        saliency(onnx_two_outputs, photo, out),
        "returns a dict of 2 parts ('logits': 1x5 tensor, 'features': 1x4x96x96 tensor)",
        "--output INDEX|KEY",
    )
    assert not out.exists()
    for key in ("logits", "0"):
        result = saliency(onnx_two_outputs, photo, tmp_path / key, "--output", key)
        assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "logits" / "saliency.json").read_text())
    assert 0 <= summary["targets"][0]["class"] < 5
    model = load_model(str(onnx_two_outputs), card_fields={"output": "features"})
    assert model.card.features_only and model.card.num_classes is None
    assert "features/features/0/Conv" in layer_names(model.module)


@pytest.mark.slow
def test_torchscript_tuple_output_from_the_command_line(photo, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tuple.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(TupleNet().eval()), str(path))
    refused(saliency(path, photo, tmp_path / "a", "--input-size", "32"), "a tuple of 2 parts")
    result = saliency(path, photo, tmp_path / "b", "--input-size", "32", "--output", "0")
    assert result.exit_code == 0, result.output
    layers = run("layers", path, "--input-size", "32", "--output", "0")
    refused(layers, "this model is TorchScript")


@pytest.mark.slow
def test_segmentation_model_returns_its_out_part():
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    with pytest.raises(ConvsightError, match=r"'out': 1x3x64x64 tensor"):
        Model.from_module(module, input_size=64)
    model = Model.from_module(module, input_size=64, output="out")
    assert model.card.num_classes is None  # class scores per pixel, not per image
    assert layer_names(model.module) == layer_names(module)
    shapes = output_shapes(model.module, ["backbone.0"], model.example_input())
    assert shapes == {"backbone.0": (16, 32, 32)}
    with torch.no_grad():
        assert model.module(model.example_input()).shape == (1, 3, 64, 64)


def test_atlas_says_why_it_could_not_use_the_dataset_images(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (40, 30 + i)).save(folder / f"big{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    model = load_model("mnist-cnn", card_fields={"resize": None})
    with pytest.raises(ConvsightError) as info:
        request = AtlasRequest(
            ["features.0"],
            channels="0",
            dataset=folder,
            top_k=1,
            presets=["paper"],
            steps=1,
            batch=1,
        )
        check_inputs(model, request)
    message = str(info.value)
    assert message.startswith("no image of the dataset could be read for model 'mnist-cnn': ")
    assert '3 files: "' in message and "big0.png is 40x30 pixels" in message
    assert "takes exactly 28x28" in message and '1 file: "' in message
    assert "broken.png is not an image file" in message

    # With more reasons than are shown, the rest are counted.
    skipped = [{"path": f"f{i}", "reason": f"f{i} reason {chr(97 + i)}"} for i in range(5)]
    text = skipped_reasons(skipped + [{"path": "g", "reason": "g reason a"}])
    assert text.startswith('2 files: "f0 reason a"; 1 file: "f1 reason b"')
    assert text.endswith("; 2 more files for 2 other reasons")


@pytest.mark.slow
def test_atlas_command_names_the_images_it_skipped(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("L", (28, 28), 200).save(folder / "good.png")
    Image.new("L", (28, 28), 50).save(folder / "good2.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = run(
        "atlas", "mnist-cnn", "--layers", "features.0", "--channels", "0", "--presets", "paper",
        "--steps", "1", "--dataset", folder, "--top-k", "1", "--out", tmp_path / "atlas",
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped: 1 image of the dataset: 1 file:" in result.stderr
    assert "broken.png is not an image file" in result.stderr


class SoftmaxTupleNet(nn.Module):
    """Returns (probabilities, features): its softmax head is cut on the chosen part."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x).mean((2, 3))
        return self.head(features).softmax(1), features


def test_changing_the_output_after_a_head_cut_is_one_sentence():
    torch.manual_seed(0)
    model = Model.from_module(SoftmaxTupleNet(), input_size=16, output=0)
    assert model.card.head == "softmax cut"
    x = torch.rand(2, 3, 16, 16)
    expected = SoftmaxTupleNet.forward(model.module, x)[0]  # the model's own probabilities
    assert torch.allclose(model.module(x).softmax(1), expected, atol=1e-6)
    with pytest.raises(ConvsightError, match="load it again with output=1"):
        model.card = model.card.updated(output=1)
    model.card = model.card.updated(labels=["a", "b", "c"])  # the same output: fine
    assert torch.allclose(model.module(x).softmax(1), expected, atol=1e-6)
