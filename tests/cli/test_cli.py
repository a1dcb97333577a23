import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from convsight.cli import app
from convsight.models import load_model
from convsight.report import write_checkpoint

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result, fragment: str):
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2  # one sentence (maybe wrapped)


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    return write_checkpoint(path, model.module, model.card)


@pytest.mark.slow
def test_every_command_has_help():
    for cmd in (
        ["--help"],
        ["models", "--help"],
        ["layers", "--help"],
        ["train", "mnist", "--help"],
        ["activations", "--help"],
        ["demo", "--help"],
    ):
        result = run(*cmd)
        assert result.exit_code == 0 and "Usage" in result.output


def test_layers_command_prints_names_types_shapes():
    result = run("layers", "mnist-cnn")
    assert result.exit_code == 0, result.output
    assert "features.0" in result.output and "Conv2d" in result.output
    assert "32x14x14" in result.output


def test_models_command():
    result = run("models")
    assert result.exit_code == 0 and "mnist-cnn" in result.output and "vgg16" in result.output


def test_unknown_layer_exit_2(mnist_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run("activations", mnist_checkpoint, "--layers", "features.9", "--out", out)
    assert_bad_input(result, "unknown layer 'features.9'")
    assert not out.exists()  # failed before any output


def test_corrupt_checkpoint_exit_2(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    assert_bad_input(run("layers", "mnist-cnn", "--weights", bad), "cannot read checkpoint")


@pytest.mark.slow
def test_image_input_errors_exit_2(mnist_checkpoint, tmp_path, mnist_dir):
    out = tmp_path / "out"
    common = [mnist_checkpoint, "--out", out]
    assert_bad_input(run("activations", *common, "--image", tmp_path / "x.png"), "does not exist")
    text = tmp_path / "a.png"
    text.write_text("not an image")
    assert_bad_input(run("activations", *common, "--image", text), "not an image")
    big = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(big)
    exact = ["--resize", "none"]  # by default a photo is resized; this asks for the exact size
    assert_bad_input(run("activations", *common, *exact, "--image", big), "takes exactly 28x28")
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (28, 28)).save(rgb)
    assert_bad_input(run("activations", *common, *exact, "--image", rgb), "has 3 channels")
    result = run("activations", *common, "--mnist-index", "99999", "--data-dir", mnist_dir)
    assert_bad_input(result, "out of range")
    assert not out.exists()


@pytest.mark.slow
def test_activations_for_a_seven(mnist_checkpoint, tmp_path, mnist_dir):
    out = tmp_path / "act"
    result = run("activations", mnist_checkpoint, "--data-dir", mnist_dir, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "activations.json").read_text())
    assert summary["input"] == "MNIST test image 0 (label 7)"
    assert [layer["layer"] for layer in summary["layers"]] == ["features.0", "features.3"]
    arrays = np.load(out / "activations.npz")
    assert arrays["features.0"].shape == (1, 32, 26, 26)
    assert arrays["features.3"].shape == (1, 64, 11, 11)
    for name in ("features.0.png", "features.3.png", "input.png"):
        with Image.open(out / name) as img:
            assert img.width > 150
    assert not list(out.glob("*.part"))


@pytest.mark.slow
def test_activations_on_a_photo_with_vgg16(shared, tmp_path):
    out = tmp_path / "vgg"
    photo = shared / "data" / "photos" / "husky.jpg"
    weights = shared / "models" / "vgg16_hed_features.pt"
    result = run(
        "activations",
        "vgg16",
        "--weights",
        weights,
        "--image",
        photo,
        "--layers",
        "features.2",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    arrays = np.load(out / "activations.npz")
    assert arrays["features.2"].shape == (1, 64, 224, 224)
    assert json.loads((out / "activations.json").read_text())["prediction"] is None
    result = run("activations", "vgg16", "--weights", weights, "--out", out)
    assert_bad_input(result, "pass --image")


@pytest.mark.slow
def test_train_mnist_writes_everything(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = run(
        "train",
        "mnist",
        "--epochs",
        "1",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--data-dir",
        mnist_dir,
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["stride"] == 2 and metrics["settings"]["train_examples"] == 2000
    assert len(metrics["history"]) == 1 and metrics["test_accuracy"] > 0.6
    assert (out / "training_curves.png").stat().st_size > 1000
    model = load_model(str(out / "model.pt"))
    assert model.card.arch_options == {"stride": 2, "padding": "same"}


def test_train_with_bad_stride_exit_2(tmp_path, mnist_dir):
    result = run(
        "train", "mnist", "--stride", "3", "--data-dir", mnist_dir, "--out", tmp_path / "o"
    )
    assert_bad_input(result, "stride must be 1 or 2")


def test_models_command_lists_every_source():
    import timm

    result = run("models")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for text in ("seed", "torchvision", "timm:NAME", ".safetensors", ".ts", ".onnx", ".keras"):
        assert text in flat, text
    assert f"{len(timm.list_models()):,}" in flat  # how many timm models
    listed = run("models", "--source", "timm")
    assert listed.exit_code == 0 and "timm:convnext_atto" in listed.output.split()
    assert run("models", "--source", "seed").output.split() == ["mnist-cnn", "five-class-cnn"]
    assert_bad_input(run("models", "--source", "hub"), "unknown source 'hub'")


def test_card_flags_reach_every_model_command():
    import typer

    commands = typer.main.get_command(app).commands
    card_flags = {
        "--input-size",
        "--input-channels",
        "--mean",
        "--std",
        "--labels",
        "--num-classes",
    }
    for name in ("layers", "card", "activations", "atlas", "maximize", "classviz", "saliency"):
        flags = {flag for param in commands[name].params for flag in param.opts}
        assert card_flags <= flags, name
        # --channels means the input's channels unless the command has its own --channels.
        own = name in ("maximize", "atlas")
        channels = next(p for p in commands[name].params if "--channels" in p.opts)
        assert (channels.name == "channels") == own, name
    assert card_flags <= {f for p in commands["evaluate"].params for f in p.opts}


def test_card_flags_for_a_seed_network():
    result = run("layers", "mnist-cnn", "--num-classes", "5")
    assert result.exit_code == 0, result.output
    assert "classifier.4" in result.output and "645" in result.output  # Linear(128, 5)


def test_an_untrained_network_renders_the_same_twice_with_one_seed(tmp_path):
    """The seed comes before the model is built: an untrained network's weights, and so its
    renders, repeat with --seed (they did not when no card flag was given)."""
    import numpy as np

    images = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ("maximize", "mnist-cnn", "--layer", "features.0", "--channels", "0-1")
        result = run(*args, "--steps", "2", "--seed", "3", "--out", out)
        assert result.exit_code == 0, result.output
        images.append(np.load(out / "images.npz")["images"])
    assert np.array_equal(images[0], images[1])
