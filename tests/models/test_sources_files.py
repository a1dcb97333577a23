"""Model files: safetensors and .pt state dicts, cards written by `convsight card`, card flags,
TorchScript, and the .onnx / .keras wiring to their converters."""

from __future__ import annotations

import json
import sys
import types
import warnings

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.layers import capture, get_layer
from convsight.models import CardWarning, Model, ModelCard, card_path, load_model, make_card
from convsight.report import write_checkpoint
from tests.conftest import TinyNet

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, fragment: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def mnist_state(tmp_path_factory):
    """An MNIST CNN (stride 2), its checkpoint as .pt with its card, and as .safetensors."""
    folder = tmp_path_factory.mktemp("mnist")
    torch.manual_seed(0)
    model = load_model("mnist-cnn")
    pt = write_checkpoint(folder / "mnist.pt", model.module, model.card)
    save_file(model.module.state_dict(), str(folder / "mnist.safetensors"))
    return model, pt, folder / "mnist.safetensors"


@pytest.mark.slow
def test_safetensors_state_dict_loads_like_pt_without_pickle(mnist_state, monkeypatch):
    model, pt, safe = mnist_state

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called for a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    from_safe = load_model("mnist-cnn", weights=safe)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(from_safe.module(x), model.module(x))
    # With a card beside it, the safetensors file alone is a model spec.
    card_path(safe).write_text(card_path(pt).read_text())
    alone = load_model(str(safe))
    with torch.no_grad():
        assert torch.equal(alone.module(x), model.module(x))


def test_bad_safetensors_files_are_one_sentence(tmp_path, monkeypatch):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ConvsightError, match=f"cannot read safetensors file {bad}"):
        load_model("mnist-cnn", weights=bad)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ConvsightError) as info:
        load_model("mnist-cnn", weights=bad)
    assert str(info.value) == (
        "reading .safetensors files needs the safetensors extra: "
        "pip install 'convsight[safetensors]'"
    )


@pytest.mark.slow
def test_torchvision_state_dict_with_a_replaced_head(tmp_path):
    torch.manual_seed(0)
    module = tvm.resnet18(num_classes=3).eval()
    path = tmp_path / "pets.pt"
    torch.save(module.state_dict(), path)
    model = load_model("resnet18", weights=path)
    assert model.card.num_classes == 3 and model.card.labels is None
    assert model.card.mean == pytest.approx((0.485, 0.456, 0.406))  # torchvision's own
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.module(x), module(x))
    with pytest.raises(ConvsightError, match="their head has 3 classes: give --num-classes 3"):
        load_model("resnet18", weights=path, card_fields={"num_classes": 5})
    named = load_model("resnet18", weights=path, card_fields={"labels": ["a", "b", "c"]})
    assert named.class_index("c") == 2


def test_checkpoint_without_a_card_names_the_card_command(tmp_path, mnist_state):
    _, pt, _ = mnist_state
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pt.read_bytes())
    message = one_line_error(run("layers", bare), "has no card beside it (bare.json)")
    assert f"convsight card {bare} --arch ARCH" in message
    assert not bare.with_suffix(".json").exists()


@pytest.mark.slow
def test_card_command_writes_a_checked_card_and_keeps_an_existing_one(tmp_path, mnist_state):
    _, pt, _ = mnist_state
    weights = tmp_path / "digits.pt"
    weights.write_bytes(pt.read_bytes())
    labels = tmp_path / "digits.json"  # the card's own place: refused as a labels file later
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"digit {d}" for d in range(10)]))
    result = run("card", weights, "--arch", "mnist-cnn", "--labels", names)
    assert result.exit_code == 0, result.output
    card = ModelCard.read(labels)
    assert card.arch == "convsight:mnist-cnn" and card.name == "digits"
    assert card.labels[7] == "digit 7" and card.mean == (0.1307,) and card.resize == 28
    assert load_model(str(weights)).class_index("digit 3") == 3
    before = labels.read_text()
    one_line_error(run("card", weights, "--arch", "mnist-cnn"), "already exists: pass --force")
    assert labels.read_text() == before
    result = run("card", weights, "--arch", "mnist-cnn", "--force")
    assert result.exit_code == 0 and ModelCard.read(labels).labels[7] == "7"
    # A card that does not fit the weights is refused and nothing is written.
    labels.unlink()
    one_line_error(run("card", weights, "--arch", "five-class-cnn"), "do not fit")
    one_line_error(run("card", weights), "give the architecture")
    one_line_error(run("card", weights, "--arch", "nonsense"), "unknown architecture")
    one_line_error(run("card", weights, "--arch", "mnist-cnn", "--num-classes", "4"), "10 classes")
    assert not labels.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--input-size", "64y128"], "cannot read the input size '64y128'"),
        (["--input-size", "0"], "cannot read the input size '0'"),
        (["--mean", "a,b"], "cannot read --mean 'a,b'"),
        (["--std", "0"], "bad input.std"),
        (["--labels", "missing.txt"], "labels file missing.txt does not exist"),
        (["--input-channels", "9"], "--input-channels"),
    ],
)
def test_bad_card_flags_are_one_sentence(flags, fragment):
    one_line_error(run("layers", "mnist-cnn", *flags), fragment)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A TorchScript file of the tiny test net (32x32 RGB, 4 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "tiny.ts"
    with warnings.catch_warnings():  # torch.jit.script is deprecated; files of it still exist
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyNet().eval()).save(str(path))
    return path


@pytest.mark.slow
def test_torchscript_card_from_flags_with_a_warning_for_missing_mean_std(scripted, tmp_path):
    out = tmp_path / "sal"
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    args = ["saliency", scripted, "--input-size", "32", "--image", image, "--out", out]
    result = run(*args, "--methods", "saliency", "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: model 'tiny' has no mean/std" in result.stderr
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["model"] == "tiny" and summary["targets"][0]["label"] in "0123"
    # mean and std given: no warning; the class count comes from the module's output.
    model = load_model(
        str(scripted), card_fields={"input_size": (32, 32), "mean": 0.5, "std": 0.25}
    )
    assert model.card.num_classes == 4 and model.card.arch == "torchscript"
    one_line_error(run("layers", scripted), "has no card beside it (tiny.json)")


@pytest.mark.slow
def test_torchscript_layer_methods_say_what_works(scripted, tmp_path):
    flags = ["--input-size", "32", "--mean", "0.5", "--std", "0.25"]
    for args in (
        ["layers", scripted],
        ["activations", scripted, "--out", tmp_path / "a"],
        ["maximize", scripted, "--layer", "features.0", "--out", tmp_path / "m"],
    ):
        message = one_line_error(run(*args, *flags), "is TorchScript, whose layers take no hooks")
        assert "saliency" in message and "classviz" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "m").exists()
    model = load_model(str(scripted), card_fields={"input_size": 32, "mean": 0.5, "std": 0.25})
    with pytest.raises(ConvsightError, match="TorchScript"):
        get_layer(model.module, "features.0")
    with pytest.raises(ConvsightError, match="TorchScript"):
        with capture(model.module, ["features.0"]):
            pass
    # A scripted part of a PyTorch model cannot be hooked either.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mixed = torch.nn.Sequential(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), torch.nn.ReLU())
    with pytest.raises(ConvsightError, match="TorchScript"):
        get_layer(mixed, "0")
    assert get_layer(mixed, "1") is mixed[1]


def fake_converter(monkeypatch, kind: str, load) -> list:
    """Put a stand-in for the ``kind`` converter module in place; return its calls."""
    calls = []
    module = types.ModuleType(f"convsight.models.convert.{kind}")

    def loader(path, card):
        calls.append((path, card))
        return load(path, card)

    setattr(module, f"load_{kind}", loader)
    monkeypatch.setitem(sys.modules, f"convsight.models.convert.{kind}", module)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_onnx_and_keras_files_go_to_their_converter(tmp_path, monkeypatch, kind):
    path = tmp_path / f"net.{kind}"
    path.write_bytes(b"model")
    tiny = Model.from_module(TinyNet(), input_size=32, name="net")
    calls = fake_converter(monkeypatch, kind, lambda p, card: Model(tiny.module, card or tiny.card))
    with pytest.warns(CardWarning, match="model 'net' has no mean/std"):  # the converter's guess
        assert load_model(str(path)).card.num_classes == 4
    assert calls[-1] == (path, None)
    # A card beside the file is read and given to the converter; flags change it.
    card_path(path).write_text(json.dumps(tiny.card.to_dict() | {"name": "beside"}))
    model = load_model(str(path), card_fields={"labels": ["a", "b", "c", "d"]})
    assert calls[-1][1].name == "beside" and model.card.labels == ["a", "b", "c", "d"]
    result = run("layers", path)
    assert result.exit_code == 0 and "features.0" in result.output


@pytest.mark.parametrize(("kind", "package"), [("onnx", "onnx2torch"), ("keras", "keras")])
def test_missing_converter_extra_is_one_sentence(tmp_path, monkeypatch, kind, package):
    path = tmp_path / f"net.{kind}"
    path.write_bytes(b"model")

    def missing(path, card):
        raise ModuleNotFoundError(f"No module named '{package}'", name=package)

    fake_converter(monkeypatch, kind, missing)
    sentence = f"reading .{kind} files needs the {kind} extra: pip install 'convsight[{kind}]'"
    with pytest.raises(ConvsightError) as info:
        load_model(str(path))
    assert str(info.value) == sentence
    assert one_line_error(run("layers", path), sentence).strip() == f"error: {sentence}"


def test_make_card_for_a_torchscript_file(scripted):
    card = make_card(scripted, card_fields={"input_size": (32, 32), "mean": 0.5, "std": 0.5})
    assert card.arch == "torchscript" and card.num_classes == 4 and card.resize == 32
    with pytest.raises(ConvsightError, match="leave out --arch"):
        make_card(scripted, arch="resnet18", card_fields={"input_size": (32, 32)})


@pytest.mark.slow
def test_a_real_onnx_file_through_load_model_and_the_cli(tmp_path):
    pytest.importorskip("onnx2torch")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, 32, 32), str(path), dynamo=False)
    model = load_model(str(path), card_fields={"mean": 0.5, "std": 0.25, "labels": list("abcd")})
    assert model.card.mean == (0.5,) * 3 and model.class_index("c") == 2
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.module(model.normalize(x)), net((x - 0.5) / 0.25), atol=1e-4)
    result = run("layers", path)
    assert result.exit_code == 0 and "warning: model 'tiny' has no mean/std" in result.stderr
    assert "Conv2d" in result.output
