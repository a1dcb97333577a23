import json
from pathlib import Path

import pytest
import torch
from torch import nn

from convsight.data import load_image_tensor
from convsight.data.imagenet import imagenet_class_of
from convsight.errors import ConvsightError
from convsight.models import ModelCard, card_path, imagenet_labels, list_models, load_model
from convsight.models.card import IMAGENET_MEAN, IMAGENET_STD
from convsight.report import write_checkpoint


def sample_batch(samples: list[Path], card: ModelCard) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel tensors of the sample photos and their ImageNet class indices."""
    x = torch.cat([load_image_tensor(p, card) for p in samples])
    y = torch.tensor([imagenet_class_of(p) for p in samples])
    return x, y


def test_sample_photo_classes_follow_sorted_synsets(samples):
    # Every tenth class is in the sample set; class index = position among sorted synsets.
    classes = [imagenet_class_of(p) for p in samples]
    assert classes == sorted(classes)
    assert set(range(0, 1000, 10)) <= set(classes)
    assert imagenet_class_of(Path("n01443537_goldfish.JPEG")) == 1


def test_zoo_lists_seeds_and_torchvision():
    names = list_models()
    assert {"mnist-cnn", "five-class-cnn", "vgg16", "mobilenet_v2", "resnet50"} <= set(names)


@pytest.fixture(scope="module")
def mobilenet_batch(samples, mobilenet_v2):
    return sample_batch(samples, mobilenet_v2.card)


@pytest.mark.slow
def test_mobilenet_v2_classifies_sample_photos(mobilenet_batch, mobilenet_v2):
    card = mobilenet_v2.card
    assert card.mean == pytest.approx((128 / 255,) * 3)
    assert card.num_classes == 1000 and card.labels[1] == "goldfish"
    x, y = mobilenet_batch
    with torch.no_grad():
        pred = mobilenet_v2.module(mobilenet_v2.normalize(x)).argmax(1)
    top1 = (pred == y).float().mean().item()
    assert top1 >= 0.7, top1


@pytest.mark.slow
def test_mobilenet_v2_with_wrong_normalization_is_worse(mobilenet_batch, mobilenet_v2):
    # The card's normalization matters: ImageNet mean/std instead of 128/255 hurts.
    x, y = mobilenet_batch[0][:48], mobilenet_batch[1][:48]
    wrong = ModelCard.from_dict(
        {
            "arch": "x",
            "input": {"size": 224, "channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        },
        "wrong",
    )
    with torch.no_grad():
        good = mobilenet_v2.module(mobilenet_v2.normalize(x)).argmax(1)
        bad = mobilenet_v2.module(wrong.normalize(x)).argmax(1)
    assert (good == y).sum() > (bad == y).sum()


@pytest.mark.slow
def test_vgg16_features_load_without_a_head(shared, samples):
    model = load_model("vgg16", weights=shared / "models" / "vgg16_hed_features.pt")
    assert model.card.features_only and model.card.num_classes is None
    assert isinstance(model.module.classifier, nn.Identity)
    x = load_image_tensor(samples[0], model.card)
    with torch.no_grad():
        out = model.module.features(model.normalize(x))
    assert out.shape == (1, 512, 7, 7) and out.abs().sum() > 0
    with pytest.raises(ConvsightError, match="no class scores"):
        model.class_index("goldfish")


@pytest.mark.slow
def test_mobilenet_v1_torchscript_judge_loads_with_a_card(shared, samples):
    path = shared / "models" / "mobilenet_v1_05_160.ts"
    with pytest.raises(ConvsightError, match="no card"):
        load_model(str(path))
    card = ModelCard(
        name="mobilenet_v1_05_160",
        arch="torchscript",
        input_size=(160, 160),
        channels=3,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        labels=imagenet_labels(),
        resize=183,
    )
    model = load_model(str(path), card=card)
    x, y = sample_batch(samples, card)
    with torch.no_grad():
        pred = model.module(model.normalize(x)).argmax(1)
    assert (pred == y).float().mean() >= 0.5


@pytest.mark.slow
def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(1)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    path = write_checkpoint(tmp_path / "m.pt", model.module, model.card)
    card = json.loads(card_path(path).read_text())
    assert card["arch"] == "convsight:mnist-cnn"
    assert card["arch_options"] == {"stride": 1, "padding": "valid"}
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.module.state_dict())
    again = load_model(str(path))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.module(x), again.module(x))
    assert again.card.arch_options["stride"] == 1


def test_checkpoint_that_unpickles_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "fn": print}, path)
    with pytest.raises(ConvsightError, match="contains code or objects") as info:
        load_model("mnist-cnn", weights=path)
    assert "weights_only=True" in str(info.value) and "weights_only=False" not in str(info.value)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConvsightError, match="cannot read checkpoint"):
        load_model("mnist-cnn", weights=bad)
    other = tmp_path / "other.pt"
    torch.save(load_model("mnist-cnn", stride=1, padding="valid").module.state_dict(), other)
    with pytest.raises(ConvsightError, match="do not fit"):
        load_model("mnist-cnn", weights=other)  # stride 2 has another dense size
    with pytest.raises(ConvsightError, match="does not exist"):
        load_model("mnist-cnn", weights=tmp_path / "missing.pt")


def test_unknown_model_suggests_names():
    with pytest.raises(ConvsightError, match="mobilenet_v2"):
        load_model("mobilenet_v3")
    with pytest.raises(ConvsightError, match="unknown model"):
        load_model("nonsense-net")


def test_class_index_by_name_and_range(mobilenet_v2):
    assert mobilenet_v2.class_index("goldfish") == 1
    assert mobilenet_v2.class_index("Siberian_husky") == 250
    assert mobilenet_v2.class_index("9") == 9
    with pytest.raises(ConvsightError, match="out of range"):
        mobilenet_v2.class_index(1000)
    with pytest.raises(ConvsightError, match="unknown class"):
        mobilenet_v2.class_index("goldfsh")


@pytest.mark.slow
def test_torchvision_download_path_with_mocked_transport(tmp_path, monkeypatch):
    """load_model('vgg16') downloads torchvision's weights; only the download is mocked."""
    import torch.hub
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    reference = tvm.vgg16()
    urls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        urls.append(url)
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = load_model("vgg16")
    assert urls == [tvm.VGG16_Weights.IMAGENET1K_V1.url]
    assert model.card.labels[1] == "goldfish" and model.card.input_size == (224, 224)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.module(x), reference.eval()(x))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConvsightError, match="--weights FILE"):
        load_model("resnet18")
