"""Softmax heads: the scores before a final softmax are the class scores, for every source.

For each kind of head (``nn.Softmax`` in a Sequential, ``F.softmax`` / ``x.softmax`` /
``F.log_softmax`` at the end of forward, a Keras Dense with ``activation='softmax'``, an ONNX
``Softmax`` node, an opaque TorchScript returning probabilities) the card says what was done,
the probabilities convsight reports are the model's own, and gradients and class models are
those of the scores before softmax, computed here by hand.
"""

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
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from convsight.cli import app
from convsight.data import load_image_tensor
from convsight.layers import capture, layer_names
from convsight.models import CardWarning, Model, load_model
from convsight.optvis.settings import settings_for
from convsight.studies.optvis import ClassvizRequest, classviz
from convsight.studies.saliency import SaliencyRequest, write_saliency

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported, as the loader does

SIZE, CLASSES = 16, 5


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


class Scores(nn.Module):
    """A tiny conv net's class scores (before any softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Ending(Scores):
    """The scores, then ``end`` of them (F.softmax, x.softmax, F.log_softmax...)."""

    def __init__(self, end: str) -> None:
        super().__init__()
        self.end = end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        if self.end == "functional":
            return F.softmax(z, dim=1)
        if self.end == "method":
            return z.softmax(-1)
        return F.log_softmax(z, 1)


def sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, CLASSES),
        nn.Softmax(dim=1),
    ).eval()


def ending(end: str) -> Ending:
    torch.manual_seed(0)
    return Ending(end).eval()


# The user's module, its head, and its scores before softmax (by hand: the module's own parts).
PYTHON_MODULES = {
    "nn.Softmax": (sequential, "softmax cut", lambda m, x: m[:-1](x)),
    "F.softmax": (lambda: ending("functional"), "softmax cut", Scores.forward),
    "x.softmax": (lambda: ending("method"), "softmax cut", Scores.forward),
    "F.log_softmax": (lambda: ending("log"), "log-softmax cut", Scores.forward),
}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("image") / "noise.png"
    Image.fromarray(pixels).save(path)
    return path


def probabilities(module_output: torch.Tensor, head: str) -> torch.Tensor:
    return module_output.exp() if head == "log-softmax cut" else module_output


def hand_saliency(score, pixels: torch.Tensor, target: int) -> torch.Tensor:
    """|d score[target] / d pixels| by autograd, ``score`` a function of the pixels."""
    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(x)[:, target].sum(), x)
    return grad.abs()


def check_saliency(out: Path, pixels: torch.Tensor, own: torch.Tensor, score) -> None:
    """saliency.json's probability is the model's own; the saliency map is the gradient of the
    score before softmax (``score``: pixels to scores, by hand)."""
    summary = json.loads((out / "saliency.json").read_text())
    target = summary["targets"][0]["class"]
    assert target == int(own.argmax(1))
    assert summary["target_probability"][0] == pytest.approx(float(own[0, target]), abs=1e-4)
    got = torch.from_numpy(np.load(out / "saliency.npz")["saliency_attributions"])
    expected = hand_saliency(score, pixels, target)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PYTHON_MODULES))
def test_python_softmax_heads_are_cut(kind, image, tmp_path):
    build, head, scores = PYTHON_MODULES[kind]
    module = build()
    model = Model.from_module(module, input_size=SIZE, mean=0.5, std=0.25)
    assert model.card.head == head and model.card.to_dict()["head"] == head
    assert layer_names(model.module) == layer_names(module)
    assert type(model.module).__name__ == type(module).__name__
    pixels = load_image_tensor(image, model.card)
    x = model.normalize(pixels)
    with torch.no_grad():
        own = probabilities(module(x), head)
        cut = model.module(x)
        torch.testing.assert_close(cut, scores(module, x))  # the scores before softmax
    torch.testing.assert_close(cut.softmax(1), own, rtol=0, atol=1e-4)

    request = SaliencyRequest([image], methods=["saliency"])
    write_saliency(model, request, out=tmp_path, show_progress=False)
    check_saliency(tmp_path, pixels, own, lambda p: scores(module, model.normalize(p)))
    assert json.loads((tmp_path / "saliency.json").read_text())["head"] == head


def test_a_cut_module_stays_cut_when_copied_pickled_or_traced():
    model = Model.from_module(sequential(), input_size=SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.module(x)
        assert not torch.allclose(expected.sum(1), torch.ones(2))  # scores, not probabilities
        copies = [
            copy.deepcopy(model.module),
            pickle.loads(pickle.dumps(model.module)),
            torch.fx.symbolic_trace(model.module),  # the incremental engine's graph
        ]
        for other in copies:
            torch.testing.assert_close(other(x), expected)
    assert Model.from_module(model.module, input_size=SIZE).card.head == "softmax cut"


def test_plain_logits_model_is_untouched(image, tmp_path):
    torch.manual_seed(0)
    module = Scores().eval()
    model = Model.from_module(module, input_size=SIZE)
    assert model.card.head == "logits" and type(model.module) is Scores
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), module(x), rtol=0, atol=0)
    pixels = load_image_tensor(image, model.card)
    with torch.no_grad():
        own = module(pixels).softmax(1)
    request = SaliencyRequest([image], methods=["saliency"])
    write_saliency(model, request, out=tmp_path, show_progress=False)
    check_saliency(tmp_path, pixels, own, module)
    assert json.loads((tmp_path / "saliency.json").read_text())["head"] == "logits"


@pytest.mark.slow
def test_classviz_maximizes_the_score_before_softmax(tmp_path):
    module = sequential()
    model = Model.from_module(module, input_size=SIZE, labels=list("abcde"))
    settings = settings_for("robust", "class", steps=3, size=SIZE, class_objective="logit")
    request = ClassvizRequest([2, 4], settings)
    summary = classviz(model, request, out=tmp_path, show_progress=False).to_json()
    assert summary["head"] == "softmax cut" and summary["objective"].startswith("logit(")
    images = torch.from_numpy(np.load(tmp_path / "images.npz")["images"])
    with torch.no_grad():
        scores = module[:-1](model.normalize(images))
        own = module(model.normalize(images))
    for row, (index, cls) in enumerate(((0, 2), (1, 4))):
        entry = summary["classes"][row]
        assert entry["logit"] == pytest.approx(float(scores[index, cls]), abs=1e-4)
        assert entry["objective"] == pytest.approx(entry["logit"], abs=1e-3)
        assert entry["probability"] == pytest.approx(float(own[index, cls]), abs=1e-4)


# -- model files through the command line ----------------------------------------------------
def keras_file(folder: Path) -> tuple[Path, object]:
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    net = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            layers.Conv2D(6, 3, activation="relu", name="conv"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(CLASSES, activation="softmax", name="head"),
        ]
    )
    path = folder / "softmax.keras"
    net.save(path)
    return path, net


def onnx_file(folder: Path) -> tuple[Path, nn.Module]:
    module = ending("functional")
    path = folder / "softmax.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path))
    return path, module


def torchscript_file(folder: Path) -> tuple[Path, nn.Module]:
    path = folder / "softmax.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(sequential())
        scripted.save(str(path))
    return path, scripted


def saliency_cli(path: Path, image: Path, out: Path, *extra: object):
    result = run("saliency", path, "--image", image, "--methods", "saliency", "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_keras_softmax_dense_is_cut(image, tmp_path):
    import keras

    path, net = keras_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CardWarning)
        model = load_model(path)
    assert model.card.head == "softmax cut"
    pixels = load_image_tensor(image, model.card)
    own = torch.from_numpy(
        keras.ops.convert_to_numpy(net.predict(pixels.permute(0, 2, 3, 1).numpy(), verbose=0))
    )
    with torch.no_grad(), capture(model.module, ["head"]) as outputs:
        model.module(model.normalize(pixels))
    torch.testing.assert_close(outputs["head"], own, rtol=0, atol=1e-5)  # the layer: as in Keras
    saliency_cli(path, image, tmp_path / "out")

    def scores(p: torch.Tensor) -> torch.Tensor:  # the Dense's output before its activation
        with capture(model.module, ["head.linear"]) as outputs:
            model.module(model.normalize(p))
        return outputs["head.linear"]

    check_saliency(tmp_path / "out", pixels, own, scores)


@pytest.mark.slow
def test_onnx_softmax_node_is_cut(image, tmp_path):
    import onnxruntime

    path, module = onnx_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CardWarning)
        model = load_model(path)
    assert model.card.head == "softmax cut"
    pixels = load_image_tensor(image, model.card)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (own,) = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    saliency_cli(path, image, tmp_path / "out")
    check_saliency(tmp_path / "out", pixels, torch.from_numpy(own), Scores.forward.__get__(module))


@pytest.mark.slow
def test_torchscript_probabilities_use_their_log_with_one_warning(image, tmp_path):
    path, scripted = torchscript_file(tmp_path)
    out = tmp_path / "out"
    result = saliency_cli(path, image, out, "--input-size", SIZE, "--mean", 0, "--std", 1)
    notes = [line for line in result.stderr.splitlines() if "returns probabilities" in line]
    assert len(notes) == 1 and notes[0].startswith("warning:"), result.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = load_model(path, card_fields={"input_size": SIZE, "mean": 0, "std": 1}).card
    assert [str(w.message)[:40] for w in caught] == [notes[0][len("warning: ") :][:40]]
    assert card.head == "log of probabilities"
    pixels = load_image_tensor(image, card)
    with torch.no_grad():
        own = scripted(pixels)
    check_saliency(out, pixels, own, lambda p: scripted(p).log())
    assert json.loads((out / "saliency.json").read_text())["head"] == "log of probabilities"


@pytest.mark.slow
def test_classviz_says_in_one_line_when_it_falls_back_from_cossim(tmp_path):
    path, _ = torchscript_file(tmp_path)  # TorchScript: no nn.Linear head to read
    out = tmp_path / "out"
    args = ["--classes", "1", "--steps", "2", "--size", SIZE, "--out", out, "--quiet"]
    result = run("classviz", path, "--input-size", SIZE, "--mean", 0, "--std", 1, *args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "'margin'" in notes[0] and "'cossim'" in notes[0], result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["class_objective"] == "cossim"
    assert summary["objective"].startswith("margin(")  # what ran is recorded too
    assert summary["head"] == "log of probabilities"


@pytest.mark.slow
def test_saliency_says_in_one_line_when_an_engine_falls_back(image, tmp_path):
    path, _ = torchscript_file(tmp_path)  # torch.fx cannot trace TorchScript: no incremental
    out = tmp_path / "out"
    args = ["--methods", "occlusion", "--out", out, "--input-size", SIZE, "--mean", 0, "--std", 1]
    result = run("saliency", path, "--image", image, *args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "occlusion ran on the eager engine" in notes[0], result.stderr
    run_record = json.loads((out / "saliency.json").read_text())["methods"]["occlusion"]["run"]
    assert run_record["engine"] == "eager" and run_record["fallback"]
