"""Any nn.Module from Python: Model.from_module, card defaults shared with JSON cards, and the
library entry points that take a Model."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image
from torch import nn

from convsight.data import load_image_tensor
from convsight.errors import ConvsightError
from convsight.models import CardWarning, Model, ModelCard
from convsight.studies.mnist import ActivationsRequest, write_activations
from tests.conftest import TinyNet


class FixedNet(nn.Module):
    """A grey 20x24 classifier whose dense layer fixes its input size."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 20 * 24, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_from_module_defaults_probe_the_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Python defaults are documented: no card warning
        model = Model.from_module(TinyNet())
    card = model.card
    assert card.input_size == (224, 224) and card.channels == 3
    assert card.mean == (0.0,) * 3 and card.std == (1.0,) * 3
    assert card.num_classes == 4 and card.labels is None and card.label(2) == "2"
    assert card.resize == 256 and card.name == "TinyNet" and card.arch.endswith("TinyNet")
    assert not any(p.requires_grad for p in model.module.parameters())
    assert model.class_index("3") == 3


def test_from_module_fields_and_their_checks():
    model = Model.from_module(
        FixedNet(), input_size=(20, 24), channels=1, mean=0.5, std=0.2, labels=["a", "b", "c"]
    )
    assert model.card.num_classes == 3 and model.class_index("b") == 1
    assert model.card.resize == 20  # below 64 pixels: the shorter side resized to the input's
    with pytest.raises(ConvsightError, match="names 4 classes .* returns 3 scores"):
        Model.from_module(FixedNet(), input_size=(20, 24), channels=1, num_classes=4)
    with pytest.raises(ConvsightError, match="does not run on the input its card describes"):
        Model.from_module(FixedNet())  # 224x224 RGB does not fit it
    features = Model.from_module(nn.Sequential(nn.Conv2d(3, 2, 3)), input_size=16)
    assert features.card.num_classes is None  # no N x K output: no class scores
    imagenet = Model.from_module(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1000)), input_size=8, labels="imagenet"
    )
    assert imagenet.card.label(1) == "goldfish"
    assert imagenet.card.to_dict()["labels"] == "imagenet"  # written short, read back in full
    assert ModelCard.from_dict(imagenet.card.to_dict()) == imagenet.card


def test_from_module_leaves_the_callers_module_as_it_was():
    net = TinyNet()
    net.train()
    model = Model.from_module(net, input_size=32)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert not model.module.training
    assert not any(p.requires_grad for p in model.module.parameters())
    for mine, theirs in zip(model.module.parameters(), net.parameters(), strict=True):
        assert mine.data_ptr() == theirs.data_ptr()  # the weights are shared, not copied
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.module(x), net.eval()(x))


def test_model_adopts_the_module_it_is_given():
    net = TinyNet().train()
    model = Model(net, Model.from_module(TinyNet(), input_size=32).card)
    assert model.module is net and not net.training
    assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.slow
def test_python_and_json_cards_share_their_defaults(tmp_path):
    for size in (28, 96, (80, 120)):
        from_python = Model.from_module(TinyNet(), input_size=size).card
        sides = list(size) if isinstance(size, tuple) else size
        data = {"arch": "x", "input": {"size": sides, "channels": 3, "mean": 0, "std": 1}}
        from_json = ModelCard.from_dict(data, "x")
        assert from_python.resize == from_json.resize
        assert from_python.interpolation == from_json.interpolation == "bilinear"
    # A 96-pixel model resizes any photo; its card, written and read again, is the same.
    card = Model.from_module(TinyNet(), input_size=96).card
    assert card.resize == 110
    photo = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (10, 200, 10)).save(photo)
    assert load_image_tensor(photo, card).shape == (1, 3, 96, 96)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    fixed = Model.from_module(FixedNet(), input_size=(20, 24), channels=1, resize=None).card
    with pytest.raises(ConvsightError, match="takes exactly 24x20"):
        load_image_tensor(photo, fixed)


def test_card_updates_follow_the_fields_they_depend_on():
    card = ModelCard(
        name="m", arch="x", input_size=224, channels=3, mean=0.5, std=0.25, labels="imagenet"
    )
    assert card.resize == 256 and card.num_classes == 1000
    smaller = card.updated(input_size=(64, 128))
    assert smaller.input_size == (64, 128) and smaller.resize == 73
    assert card.updated(num_classes=5).labels is None  # 1000 names do not fit 5 classes
    assert card.updated(labels=["a", "b"]).num_classes == 2
    with pytest.warns(CardWarning, match="has no mean/std"):
        grey = card.updated(channels=1)
    assert grey.mean == (0.0,) and grey.std == (1.0,)
    with pytest.warns(CardWarning, match="has no std"):
        assert card.updated(channels=1, mean=0.4).std == (1.0,)
    with pytest.raises(ConvsightError, match="has no field 'colour'"):
        card.updated(colour=3)
    with pytest.raises(ConvsightError, match="bad input.interpolation"):
        card.updated(interpolation="cubic")
    assert card.updated(interpolation="bicubic").resample == Image.BICUBIC


def test_json_card_without_mean_std_warns():
    with pytest.warns(CardWarning, match="model 'plain' has no mean/std"):
        card = ModelCard.from_dict({"arch": "x", "input": {"size": 8, "channels": 1}}, "plain")
    assert card.mean == (0.0,) and card.std == (1.0,)
    with pytest.warns(CardWarning, match="has no std"):
        ModelCard.from_dict({"arch": "x", "input": {"size": 8, "channels": 1, "mean": 0.1}}, "p")
    data = {"arch": "x", "input": {"size": 200, "channels": 3, "mean": 0, "std": 1}}
    assert ModelCard.from_dict(data | {"input": data["input"] | {"resize": "auto"}}).resize == 229
    assert ModelCard.from_dict(data | {"input": data["input"] | {"resize": None}}).resize is None


@pytest.mark.slow
def test_write_activations_takes_a_model(tmp_path):
    torch.manual_seed(0)
    model = Model.from_module(FixedNet(), input_size=(20, 24), channels=1, mean=0.5, std=0.5)
    image = tmp_path / "grey.png"
    Image.new("L", (24, 20), 128).save(image)
    written = write_activations(model, ActivationsRequest(image=image), tmp_path / "act").files
    summary = json.loads((tmp_path / "act" / "activations.json").read_text())
    assert summary["model"] == "FixedNet" and summary["layers"][0]["layer"] == "features.0"
    assert summary["layers"][0]["shape"] == [4, 20, 24]
    assert summary["prediction"]["class"] in (0, 1, 2)
    assert any(path.name == "features.0.png" for path in written)
