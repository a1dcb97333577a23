"""Targets beyond a class: a segmentation net (torchvision's deeplabv3_mobilenet_v3_large,
random weights) and a regression CNN, from Python and from the command line, each map checked
against a gradient (or occlusion drops) computed here by hand from the same summed score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
from typer.testing import CliRunner

from convsight import Model
from convsight.attribution import GradCAM, Occlusion, Saliency
from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.studies.saliency import SaliencyRequest, saliency
from convsight.targets import OutputTarget, SegmentationTarget

pytestmark = pytest.mark.slow
runner = CliRunner()
SIZE = 64
LABELS = ["sky", "road", "car", "person", "tree"]
CLASS = 1  # "road"
LAYER = "classifier.1"  # the 3x3 conv after the ASPP block


def deeplab(classes: int = len(LABELS)) -> nn.Module:
    """Random weights, its batch norms' statistics set on random images (with the initial
    ones, every pixel of every image gets nearly the same scores)."""
    torch.manual_seed(0)
    net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the passes
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(4, 3, SIZE, SIZE))
    return net.eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def seg(pixels) -> tuple[nn.Module, Model]:
    """The net (its own labels: the class explained is the one it predicts most here)."""
    net = deeplab()
    with torch.no_grad():
        most = int(net(pixels)["out"].argmax(1).flatten().mode().values)
    labels = LABELS[:]
    labels[CLASS], labels[most] = labels[most], labels[CLASS]  # "road" is that class
    return net, Model.from_module(net, input_size=SIZE, output="out", labels=labels)


def road(model: Model) -> int:
    return model.card.labels.index("road")


def box_mask() -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[20:40, 8:30] = True
    return mask


def summed_score(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cls: int = CLASS
) -> torch.Tensor:
    """The class's scores summed over the mask, or over the pixels predicted as the class."""
    out = net(x)["out"]
    chosen = out.detach().argmax(1) == cls if mask is None else mask.expand(len(x), -1, -1)
    return (out[:, cls] * chosen).sum((1, 2))


def hand_gradient(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cls: int = CLASS
) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(summed_score(net, x, mask, cls).sum(), x)
    return grad


def hand_gradcam(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cls: int = CLASS
) -> torch.Tensor:
    kept: dict[str, torch.Tensor] = {}
    layer = net.classifier[1]
    handle = layer.register_forward_hook(lambda m, i, o: kept.update(a=o))
    try:
        score = summed_score(net, x, mask, cls).sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, kept["a"])
    weights = grad.mean((2, 3), keepdim=True)
    return torch.relu((weights * kept["a"]).sum(1, keepdim=True)).detach()


def hand_occlusion(
    net: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    window: int,
    stride: int,
    cls: int = CLASS,
) -> torch.Tensor:
    """Each pixel: the mean drop of the score over the windows (set to 0) that cover it."""
    with torch.no_grad():
        clean = summed_score(net, x, mask, cls)
        total, count = torch.zeros(len(x), SIZE, SIZE), torch.zeros(SIZE, SIZE)
        for top in range(0, SIZE - window + 1, stride):
            for left in range(0, SIZE - window + 1, stride):
                covered = x.clone()
                covered[:, :, top : top + window, left : left + window] = 0
                drop = clean - summed_score(net, covered, mask, cls)
                total[:, top : top + window, left : left + window] += drop.view(-1, 1, 1)
                count[top : top + window, left : left + window] += 1
    return total / count


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, "the reference is all zero: the check would prove nothing"
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("mask", [None, box_mask()], ids=["predicted-pixels", "mask"])
def test_segmentation_maps_equal_the_hand_computed_ones(seg, pixels, mask):
    net, model = seg
    target, cls = SegmentationTarget("road", mask=mask), road(model)
    gradient = hand_gradient(net, pixels, mask, cls)
    close(Saliency(model).attribute(pixels, target), gradient.abs())
    cam = GradCAM(model).attribute(pixels, target, layer=LAYER)
    close(cam, hand_gradcam(net, pixels, mask, cls))
    expected = hand_occlusion(net, pixels, mask, window=16, stride=16, cls=cls)
    for engine in ("incremental", "eager"):
        method = Occlusion(model)
        maps = method.attribute(pixels, target, window=16, stride=16, engine=engine)
        close(maps[:, 0], expected, rtol=1e-3)
        assert torch.equal(maps[:, 0], maps[:, 2])  # one map, every colour channel


def test_the_saliency_study_takes_a_segmentation_target_and_pixels(seg, pixels, tmp_path):
    net, model = seg
    target, cls = SegmentationTarget("road", mask=box_mask()), road(model)
    request = SaliencyRequest(images=pixels, targets=[target], methods=["saliency"])
    result = saliency(model, request)
    assert result.files == [] and not any(tmp_path.iterdir())
    close(result.maps["saliency"], hand_gradient(net, pixels, box_mask(), cls).abs().amax(1))
    with torch.no_grad():
        expected = summed_score(net, pixels, box_mask(), cls)
    assert result.target_scores == pytest.approx(expected.tolist(), rel=1e-5)
    data = result.to_json()
    assert data["target"] == "road summed over a mask" and "predicted" not in data
    assert result._repr_html_().count("<img src='data:image/png;base64,") == 2 * 2
    names = {p.name for p in result.save(tmp_path / "saved")}
    assert {"saliency.json", "saliency.npz", "saliency_image_0.png"} <= names


def test_a_segmentation_net_needs_a_target_and_a_class_target_is_refused(seg, pixels):
    _, model = seg
    with pytest.raises(ConvsightError, match="no predicted class: give a target"):
        Saliency(model).attribute(pixels)
    with pytest.raises(ConvsightError, match="use a SegmentationTarget"):
        Saliency(model).attribute(pixels, "road")
    with pytest.raises(ConvsightError, match="unknown class 'roads'.*did you mean road"):
        Saliency(model).attribute(pixels, SegmentationTarget("roads"))
    with pytest.raises(ConvsightError, match="mask selects no pixel"):
        Saliency(model).attribute(pixels, SegmentationTarget(1, torch.zeros(SIZE, SIZE)))
    with pytest.raises(ConvsightError, match="mask is 8 x 8 but the model's output is 64 x 64"):
        Saliency(model).attribute(pixels, SegmentationTarget(1, torch.ones(8, 8)))


SEG_NET = """
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large


class Seg(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.net = deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=classes
        )

    def forward(self, x):
        return self.net(x)
"""


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_the_command_line_explains_a_masked_segment(tmp_path, samples):
    net = deeplab()
    (tmp_path / "seg.py").write_text(SEG_NET)
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, tmp_path / "seg.pt")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    card = cli("card", tmp_path / "seg.pt", "--arch", f"{tmp_path / 'seg.py'}:Seg",
               "--input-size", SIZE, "--labels", tmp_path / "labels.txt", "--output", "out",
               "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
               "--resize", "none")  # fmt: skip
    assert card.exit_code == 0, card.output
    photo = tmp_path / "photo.png"  # a real photo at the input's size: no resize, no crop
    Image.open(samples[0]).convert("RGB").resize((SIZE, SIZE)).save(photo)
    Image.fromarray(box_mask().numpy().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    result = cli("saliency", tmp_path / "seg.pt", "--image", photo, "--target",
                 f"segment:road:{tmp_path / 'mask.png'}", "--methods", "saliency,gradcam,occlusion",
                 "--layer", f"net.{LAYER}", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(out / "saliency.npz")
    x = torch.from_numpy(arrays["pixels"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels_net = NormalizedNet(net, mean, std)
    mask = box_mask()
    # float32 in another memory layout (the CLI runs channels-last): 1e-3 of the largest value
    got = torch.from_numpy(arrays["saliency_attributions"])
    close(got, hand_gradient(pixels_net, x, mask).abs(), rtol=1e-3)
    got = torch.from_numpy(arrays["gradcam_attributions"])
    close(got, hand_gradcam(pixels_net, x, mask), rtol=1e-3)
    expected = hand_occlusion(pixels_net, x, mask, window=16, stride=8)
    close(torch.from_numpy(arrays["occlusion_attributions"])[:, 0], expected, rtol=1e-3)
    data = json.loads((out / "saliency.json").read_text())
    assert data["target"] == "road summed over a mask" and len(data["target_score"]) == 1


class NormalizedNet(nn.Module):
    """The segmentation net on pixels: what convsight runs, rebuilt here by hand."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std
        self.classifier = net.classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net((x - self.mean) / self.std)


def test_a_bad_segment_target_is_one_sentence_before_any_work(tmp_path, samples):
    result = cli("saliency", "mnist-cnn", "--image", samples[0], "--target", "segment:",
                 "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2
    assert "names nothing after 'segment:'" in result.output
    assert not (tmp_path / "out").exists()


class Regressor(nn.Module):
    """A CNN that returns three numbers per image (no classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16 * 16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_regression_cnn_gets_saliency_for_an_output(tmp_path):
    torch.manual_seed(0)
    net = Regressor().eval()
    model = Model.from_module(net, input_size=32)
    x = torch.rand(3, 3, 32, 32).requires_grad_(True)
    (expected,) = torch.autograd.grad(net(x)[:, 1].sum(), x)
    close(Saliency(model).attribute(x.detach(), OutputTarget(1)), expected.abs())
    with pytest.raises(ConvsightError, match="output 3 is out of range.*3 values per input"):
        Saliency(model).attribute(x.detach(), OutputTarget(3))
    result = saliency(
        model, SaliencyRequest(images=x.detach(), targets=["output:1"], methods=["saliency"])
    )
    assert result.to_json()["target"] == "output 1"
    assert result.target_scores == pytest.approx(net(x)[:, 1].tolist(), rel=1e-5)


REG_NET = """
from torch import nn


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16 * 16, 3))

    def forward(self, x):
        return self.head(self.features(x))
"""


def regressor_checkpoint(folder: Path, *flags: str) -> nn.Module:
    """reg.pt with its card beside it (`convsight card --arch reg.py:Regressor`); the net."""
    torch.manual_seed(0)
    net = Regressor().eval()
    (folder / "reg.py").write_text(REG_NET)
    torch.save(net.state_dict(), folder / "reg.pt")
    card = cli("card", folder / "reg.pt", "--arch", f"{folder / 'reg.py'}:Regressor",
               "--input-size", 32, *flags)  # fmt: skip
    assert card.exit_code == 0, card.output
    return net


def test_the_command_line_explains_output_0_of_a_regression_cnn(tmp_path, samples):
    net = regressor_checkpoint(tmp_path)
    out = tmp_path / "out"
    result = cli("saliency", tmp_path / "reg.pt", "--image", samples[0], "--target", "output:0",
                 "--methods", "saliency", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(out / "saliency.npz")
    x = torch.from_numpy(arrays["pixels"]).requires_grad_(True)
    (expected,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    close(torch.from_numpy(arrays["saliency_attributions"]), expected.abs())
    data = json.loads((out / "saliency.json").read_text())
    assert data["target"] == "output 0"
    assert data["target_score"] == pytest.approx(net(x)[:, 0].tolist(), rel=1e-5)


def test_class_models_of_a_regression_output_from_python_and_the_command_line(tmp_path, samples):
    """classviz takes any target: an output of a regression net rises under the render, the
    row records its value for the final image, and the CLI writes the same."""
    from convsight.optvis.settings import settings_for
    from convsight.studies.optvis import ClassvizRequest, classviz

    torch.manual_seed(0)
    net = Regressor().eval()
    model = Model.from_module(net, input_size=32)
    settings = settings_for("paper", "class", steps=5)
    result = classviz(model, ClassvizRequest(["output:0", "output:2"], settings), None, False)
    assert result.files == [] and [row["name"] for row in result.rows] == ["output 0", "output 2"]
    with torch.no_grad():
        final = net(result.images)
    assert [row["score"] for row in result.rows] == pytest.approx(
        [float(final[0, 0]), float(final[1, 2])], rel=1e-4
    )
    assert "s=" in result._repr_html_()
    assert regressor_checkpoint(tmp_path) is not None  # the same weights, as reg.pt
    out = tmp_path / "out"
    run = cli("classviz", tmp_path / "reg.pt", "--classes", "output:1", "--preset", "paper",
              "--steps", 5, "--out", out)  # fmt: skip
    assert run.exit_code == 0, run.output
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["classes"][0]["name"] == "output 1" and "probability" not in summary["classes"][0]
    )
    assert (out / summary["classes"][0]["file"]).is_file()


def test_evaluate_scores_the_curves_of_an_output_target(tmp_path):
    """evaluate --target output:1: the maps explain that output and the deletion curve
    starts at its value (scored as it is, not as a probability)."""
    net = regressor_checkpoint(tmp_path, "--resize", "none")
    photos = tmp_path / "photos"
    photos.mkdir()
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(3, 32, 32, 3, generator=generator)
    for i, image in enumerate(images):
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "out"
    run = cli("evaluate", tmp_path / "reg.pt", "--images", photos, "--target", "output:1",
              "--methods", "saliency", "--metrics", "deletion", "--step", 256, "--out", out,
              "--quiet")  # fmt: skip
    assert run.exit_code == 0, run.output
    data = json.loads((out / "evaluation.json").read_text())
    assert data["targets"] == "output 1"
    entry = data["methods"]["saliency"]
    assert entry["deletion_run"]["score"] == "logit"
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(photos / f"{i}.png"))) for i in range(3)]
    )
    with torch.no_grad():
        first = net(pixels.permute(0, 3, 1, 2).float() / 255)[:, 1].mean()
    assert entry["deletion_curve"]["mean_score"][0] == pytest.approx(float(first), rel=1e-4)
    bad = cli("evaluate", tmp_path / "reg.pt", "--images", photos, "--target", "output:9",
              "--out", tmp_path / "bad")  # fmt: skip
    assert bad.exit_code == 2 and "output 9 is out of range" in bad.output
    assert not (tmp_path / "bad").exists()
