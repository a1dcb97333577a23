"""``timm:NAME`` models: cards from timm's pretrained_cfg, local weights, mocked download."""

from __future__ import annotations

import json
import math
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import card_path, load_model

runner = CliRunner()


def saved(tmp_path, name: str, suffix: str, **kwargs) -> tuple[torch.nn.Module, object]:
    """A random-init timm model and its state dict saved as ``.pt`` or ``.safetensors``."""
    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.{suffix}"
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    if suffix == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return module, path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "suffix", "options"),
    [
        ("resnet18", "pt", {}),  # 1000 classes: ImageNet names
        ("convnext_atto", "safetensors", {"num_classes": 5}),  # a replaced head
        ("efficientnet_b0", "pt", {"num_classes": 3, "in_chans": 1}),  # grey input
    ],
)
def test_timm_model_with_local_weights(tmp_path, name, suffix, options):
    module, path = saved(tmp_path, name, suffix, **options)
    model = load_model(f"timm:{name}", weights=path)
    cfg = module.pretrained_cfg
    card = model.card
    assert card.arch == f"timm:{name}" and card.input_size == tuple(cfg["input_size"][1:])
    assert card.interpolation == cfg["interpolation"] == "bicubic"
    assert card.resize == math.floor(224 / cfg["crop_pct"])
    channels = options.get("in_chans", 3)
    assert card.channels == channels
    if channels == 3:
        assert card.mean == pytest.approx(cfg["mean"]) and card.std == pytest.approx(cfg["std"])
    else:  # the three channels' average
        assert card.mean == pytest.approx((sum(cfg["mean"]) / 3,))
    classes = options.get("num_classes", 1000)
    assert card.num_classes == classes
    assert (card.labels[1] == "goldfish") if classes == 1000 else card.labels is None
    x = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.module(x), module(x), atol=1e-5)


@pytest.mark.slow
def test_timm_download_with_mocked_transport(tmp_path, monkeypatch):
    """Without --weights timm downloads its pretrained weights; only the download is mocked."""
    import timm.models._hub as hub

    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    asked = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        asked.append((repo_id, filename))
        target = tmp_path / filename
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(target))
        return str(target)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    model = load_model("timm:resnet18")
    assert asked == [("timm/resnet18.a1_in1k", "model.safetensors")]
    assert model.card.labels[1] == "goldfish" and "resnet18.a1_in1k" in model.card.source
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.module(x), reference(x))

    def offline(*args, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("cannot reach huggingface.co")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(ConvsightError) as info:
        load_model("timm:resnet18")
    message = str(info.value)
    assert "could not download the pretrained weights of 'timm:resnet18'" in message
    assert "--weights FILE" in message and "\n" not in message


def test_timm_names_are_checked_and_suggested():
    with pytest.raises(ConvsightError, match=r"timm has no model 'resnet18x'.*timm:resnet18"):
        load_model("timm:resnet18x")
    with pytest.raises(ConvsightError, match=r"unknown model 'convnext_atto'.*timm:convnext_atto"):
        load_model("convnext_atto")


def test_timm_not_installed_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConvsightError) as info:
        load_model("timm:resnet18", weights=None)
    assert (
        str(info.value) == "loading timm models needs the timm extra: pip install 'convsight[timm]'"
    )


@pytest.mark.slow
def test_timm_head_that_does_not_fit_says_the_class_count(tmp_path):
    _, path = saved(tmp_path, "convnext_atto", "pt", num_classes=5)
    with pytest.raises(ConvsightError, match="their head has 5 classes: give --num-classes 5"):
        load_model("timm:convnext_atto", weights=path, card_fields={"num_classes": 7})


@pytest.mark.slow
def test_timm_card_command_then_the_checkpoint_alone(tmp_path):
    _, path = saved(tmp_path, "convnext_atto", "safetensors", num_classes=2)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n\ndog\n")
    result = runner.invoke(
        app, ["card", str(path), "--arch", "timm:convnext_atto", "--labels", str(labels)]
    )
    assert result.exit_code == 0, result.output
    card = json.loads(card_path(path).read_text())
    assert card["arch"] == "timm:convnext_atto" and card["labels"] == ["cat", "dog"]
    assert card["input"]["interpolation"] == "bicubic" and card["input"]["resize"] == 256
    result = runner.invoke(app, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    assert "stages.3" in result.output and "head.fc" in result.output
    assert load_model(str(path)).class_index("dog") == 1
