"""Model cards are validated when read and checked against the module when it loads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import ModelCard, build_seed, card_path, load_model
from convsight.report import write_checkpoint


class Gadget:
    """An object that is not a tensor: weights_only=True refuses to unpickle it."""

    def __init__(self) -> None:
        self.value = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An MNIST CNN checkpoint (stride 1, valid padding) with its card beside it."""
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model.module, model.card)


def edited_copy(checkpoint, tmp_path, edit) -> tuple:
    """A copy of the checkpoint whose card is changed by ``edit(card_dict)``."""
    path = tmp_path / "edited.pt"
    path.write_bytes(checkpoint.read_bytes())
    data = json.loads(card_path(checkpoint).read_text())
    edit(data)
    card_path(path).write_text(json.dumps(data))  # NaN is written as the literal NaN
    return path, data


def setter(*keys, value):
    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


HOSTILE = [
    ("nan mean", setter("input", "mean", value=[math.nan]), "input.mean"),
    ("infinite mean", setter("input", "mean", value=[math.inf]), "input.mean"),
    ("zero std", setter("input", "std", value=[0.0]), "input.std"),
    ("negative std", setter("input", "std", value=[-0.3]), "input.std"),
    ("std as text", setter("input", "std", value="0.3"), "input.std"),
    ("two means for one channel", setter("input", "mean", value=[0.1, 0.2]), "input.mean"),
    ("negative size", setter("input", "size", value=[-28, 28]), "input.size"),
    ("zero size", setter("input", "size", value=0), "input.size"),
    ("huge size", setter("input", "size", value=[100000, 100000]), "input.size"),
    ("fractional size", setter("input", "size", value=[28.5, 28]), "input.size"),
    ("three sides", setter("input", "size", value=[28, 28, 28]), "input.size"),
    ("no channels", setter("input", "channels", value=0), "input.channels"),
    ("huge channels", setter("input", "channels", value=10**9), "input.channels"),
    ("negative resize", setter("input", "resize", value=-5), "input.resize"),
    ("resize a word", setter("input", "resize", value="big"), "input.resize"),
    (
        "unknown interpolation",
        setter("input", "interpolation", value="cubic"),
        "input.interpolation",
    ),
    ("huge resize", setter("input", "resize", value=10**6), "input.resize"),
    ("label count", setter("labels", value=["a", "b", "c"]), "labels"),
    ("labels not text", setter("labels", value=list(range(10))), "labels"),
    ("labels a word", setter("labels", value="digits"), "labels"),
    ("empty labels", setter("labels", value=[]), "labels"),
    ("zero classes", setter("num_classes", value=0), "num_classes"),
    ("features_only text", setter("features_only", value="no"), "features_only"),
    ("arch options a list", setter("arch_options", value=[1]), "arch_options"),
    ("arch a number", setter("arch", value=7), "arch"),
]


@pytest.mark.parametrize(("what", "edit", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_card_is_refused_naming_card_and_field(checkpoint, tmp_path, what, edit, field):
    path, data = edited_copy(checkpoint, tmp_path, edit)
    if what == "label count":
        data["num_classes"] = 10  # labels say 3, num_classes 10
        card_path(path).write_text(json.dumps(data))
    with pytest.raises(ConvsightError) as info:
        ModelCard.read(card_path(path))
    message = str(info.value)
    assert f"model card '{data.get('name')}'" in message and f"bad {field}:" in message
    assert str(card_path(path)) in message and "\n" not in message
    with pytest.raises(ConvsightError, match=f"bad {field}"):
        load_model(str(path))


def test_card_missing_fields_name_them(tmp_path):
    for data, field in (
        ({"input": {"size": 28, "channels": 1}}, "'arch'"),
        ({"arch": "x"}, "'input'"),
        ({"arch": "x", "input": {"channels": 1}}, "'input.size'"),
        ({"arch": "x", "input": [28, 1]}, "bad input"),
    ):
        with pytest.raises(ConvsightError, match=field):
            ModelCard.from_dict(data, "mine")


@pytest.mark.slow
def test_hostile_cards_through_the_cli_exit_2_in_one_line(checkpoint, tmp_path):
    runner = CliRunner()
    for edit, fragment in (
        (setter("input", "mean", value=[math.nan]), "bad input.mean"),
        (setter("input", "std", value=[0]), "bad input.std"),
        (setter("input", "size", value=[-1, 28]), "bad input.size"),
        (setter("labels", value=["one", "two"]), "bad labels"),
    ):
        path, _ = edited_copy(checkpoint, tmp_path, edit)
        result = runner.invoke(app, ["layers", str(path)])
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_labels_that_do_not_match_the_model_outputs_are_refused(checkpoint, tmp_path):
    # A 10-output net labelled with the 1000 ImageNet names would call class 1 "goldfish".
    path, _ = edited_copy(
        checkpoint, tmp_path, lambda d: d.update(labels="imagenet", num_classes=None)
    )
    assert ModelCard.read(card_path(path)).num_classes == 1000  # a valid card on its own
    with pytest.raises(ConvsightError, match="names 1000 classes .* returns 10 scores"):
        load_model(str(path))
    result = CliRunner().invoke(app, ["layers", str(path)])
    assert result.exit_code == 2 and "returns 10 scores" in result.stderr


def test_card_whose_input_the_module_cannot_take_is_refused(checkpoint, tmp_path):
    path, _ = edited_copy(
        checkpoint, tmp_path, lambda d: d["input"].update(channels=3, mean=[0] * 3, std=[1] * 3)
    )
    with pytest.raises(ConvsightError, match="does not run on the input its card describes"):
        load_model(str(path))
    path, _ = edited_copy(  # the card records resize 28, the default at 28x28: "auto" here
        checkpoint, tmp_path, lambda d: d["input"].update(size=[40, 40], resize="auto")
    )
    with pytest.raises(ConvsightError, match=r"1 channel, 40x40 pixels"):
        load_model(str(path))


def test_valid_cards_still_load_and_round_trip(checkpoint):
    card = ModelCard.read(card_path(checkpoint))
    assert ModelCard.from_dict(card.to_dict(), "again") == card
    model = load_model(str(checkpoint))
    assert model.card.num_classes == 10 and model.card.labels[3] == "3"
    # One number for every channel; numpy scalars count as numbers.
    scalar = ModelCard.from_dict(
        {
            "arch": "x",
            "input": {
                "size": np.int64(32),
                "channels": 3,
                "mean": 0.5,
                "std": [np.float32(0.25)] * 3,
            },
        },
        "scalar",
    )
    assert scalar.mean == (0.5, 0.5, 0.5) and scalar.std == (0.25, 0.25, 0.25)
    assert scalar.input_size == (32, 32) and scalar.resize == 32
    with pytest.raises(ConvsightError, match="names 3 classes but num_classes is 2"):
        ModelCard(
            name="direct",
            arch="x",
            input_size=(8, 8),
            channels=1,
            mean=(0,),
            std=(1,),
            labels=["a", "b", "c"],
            num_classes=2,
        )


def test_seed_options_keep_card_and_module_in_step():
    model = load_model("mnist-cnn", num_classes=5)
    assert model.card.num_classes == 5 and model.card.labels == ["0", "1", "2", "3", "4"]
    assert model.module(model.example_input()).shape == (1, 5)
    with pytest.raises(ConvsightError, match="names 5 classes but num_classes is 3"):
        build_seed("five-class-cnn", {"num_classes": 3, "labels": list("abcde")})
    with pytest.raises(ConvsightError, match="cannot be built with the options"):
        build_seed("mnist-cnn", {"dropout": 5.0})
    with pytest.raises(ConvsightError, match="bad input.size"):
        build_seed("five-class-cnn", {"image_size": -3})


def test_checkpoint_with_a_pickled_object_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"weight": torch.zeros(2), "extra": Gadget()}, path)
    with pytest.raises(ConvsightError) as info:
        load_model("mnist-cnn", weights=path)
    message = str(info.value)
    assert message == (
        f"checkpoint {path} contains code or objects convsight will not load (only tensors "
        "are read, weights_only=True); re-save its state dict with "
        "torch.save(model.state_dict(), ...)"
    )
    result = CliRunner().invoke(app, ["layers", "mnist-cnn", "--weights", str(path)])
    assert result.exit_code == 2 and "contains code or objects" in result.stderr
    assert "weights_only=False" not in result.stderr


def test_weights_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConvsightError, match="is a folder, not a file"):
        load_model("mnist-cnn", weights=tmp_path)
    with pytest.raises(ConvsightError, match="is a folder, not a model name"):
        load_model(str(tmp_path))


def test_model_name_with_weights_whose_card_names_another_architecture(shared, checkpoint):
    mobilenet = shared / "models" / "mobilenet_v2_imagenet.pt"
    with pytest.raises(ConvsightError, match=r"names another architecture \(torchvision:mobil"):
        load_model("vgg16", weights=mobilenet)
    result = CliRunner().invoke(app, ["layers", "vgg16", "--weights", str(mobilenet)])
    assert result.exit_code == 2, result.output
    assert "names another architecture" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(ConvsightError, match="names another architecture"):
        load_model("five-class-cnn", weights=checkpoint)
    # The same name as the card's architecture, or the checkpoint alone, is fine.
    assert load_model("mnist-cnn", weights=checkpoint).card.arch == "convsight:mnist-cnn"


def test_validation_takes_any_object_with_the_card_fields():
    from types import SimpleNamespace

    from convsight.models.card_validation import validate_card

    fields = SimpleNamespace(
        name="plain",
        arch="convsight:mnist-cnn",
        input_size=28,
        channels=1,
        mean=0.5,
        std=[0.25],
        labels=None,
        num_classes=10,
        features_only=False,
        resize="auto",
        arch_options={},
        source="",
        interpolation="bilinear",
        output=None,
    )
    validate_card(fields)  # no ModelCard needed: card.py calls it, not the other way round
    assert fields.input_size == (28, 28) and fields.mean == (0.5,) and fields.resize == 28
    fields.std = [0.0]
    with pytest.raises(ConvsightError, match="model card 'plain' has a bad input.std"):
        validate_card(fields)
