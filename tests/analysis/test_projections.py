"""DeconvNet projections: support inside the receptive field, the filter itself for one conv,
max-unpooling through the forward's switches, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from convsight.analysis.dataset_examples import receptive_field, top_examples
from convsight.analysis.projections import (
    display,
    high_frequency_share,
    project_examples,
    project_units,
)
from convsight.cli import app
from convsight.models import Model

SIDE = 16


def model_of(module: nn.Module, channels: int = 2) -> Model:
    """Identity normalization: the model's input space is pixel space."""
    return Model.from_module(module, input_size=SIDE, channels=channels, name="net")


def pool_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
    )


UNITS = [(0, 0, 0), (1, 3, 4), (4, 7, 7), (2, 5, 1), (3, 4, 4)]


@pytest.mark.slow
def test_a_field_larger_than_the_image_is_measured_whole():
    """Six 5x5 convolutions see 25 pixels: more than the 16-pixel input, so the middle unit's
    gradient reaches the border there, and the field is measured again on a larger input."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(2 if i == 0 else 3, 3, 5, padding=2) for i in range(6)]
    model = model_of(nn.Sequential(*layers))
    field = receptive_field(model, "5")
    assert field.size == (25, 25) and field.stride == (1.0, 1.0)
    assert field.offset == (0.5, 0.5)  # unit (y, x) looks around pixel (y, x): same padding
    assert field.box(8, 8) == (0, 0, SIDE, SIDE)  # clipped to the image only when drawn
    assert receptive_field(model, "0").size == (5, 5)  # a small field: measured once


@pytest.mark.slow
def test_support_lies_inside_the_receptive_field():
    model = model_of(pool_net())
    field = receptive_field(model, "3")
    assert field.size == (8, 8) and field.stride == (2.0, 2.0)  # 3, pool 2, 3 at stride 2
    torch.manual_seed(1)
    pixels = torch.rand(len(UNITS), 2, SIDE, SIDE)
    found = project_units(model, pixels, "3", torch.tensor(UNITS), field, batch_size=2)
    assert found.maps.shape == pixels.shape and found.rectifier_calls == 3  # one per batch
    for (_, y, x), projection, box in zip(UNITS, found.maps, found.boxes, strict=True):
        top, left, bottom, right = box
        theory = (max(2 * y - 3, 0), max(2 * x - 3, 0), min(2 * y + 5, SIDE), min(2 * x + 5, SIDE))
        assert box == theory
        support = projection.abs().sum(0) > 0
        assert support.any()
        inside = torch.zeros_like(support)
        inside[top:bottom, left:right] = True
        assert not (support & ~inside).any(), (y, x)
    for patch, (top, left, bottom, right) in zip(found.crops(), found.boxes, strict=True):
        assert patch.shape == (2, bottom - top, right - left)


@pytest.mark.slow
@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv-relu"])
def test_one_conv_projects_to_its_filter_at_the_max_location(relu):
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 5, padding=2)
    model = model_of(nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv))
    layer = "1" if relu else "0"
    pixels = torch.rand(6, 2, SIDE, SIDE)
    examples = top_examples(model, pixels, layer, [0, 2], top_k=3)
    found = project_examples(model, pixels, examples)
    weight = conv.weight.detach()
    for item in found:
        for row, (projection, (c, y, x)) in enumerate(
            zip(item.projections.maps, item.projections.units.tolist(), strict=True)
        ):
            assert [y, x] == examples.top_positions[examples.channels.index(c)][row].tolist()
            one_hot = torch.zeros(1, 3, SIDE, SIDE)
            one_hot[0, c, y, x] = 1.0
            expected = F.conv_transpose2d(one_hot, weight, padding=2)[0]
            torch.testing.assert_close(projection, expected, rtol=0, atol=1e-6)
            placed = F.pad(torch.zeros(2, SIDE, SIDE), (2, 2, 2, 2))
            placed[:, y : y + 5, x : x + 5] = weight[c]  # the filter centred on (y, x)
            torch.testing.assert_close(projection, placed[:, 2:-2, 2:-2], rtol=0, atol=1e-6)
        assert item.projections.rectifier_calls == (1 if relu else 0)
        assert [p.shape[0] for p in item.patches] == [2, 2, 2]


@pytest.mark.slow
def test_max_pool_is_undone_by_unpooling_with_the_forward_switches():
    net = pool_net()
    model = model_of(net)
    torch.manual_seed(3)
    pixels = torch.rand(len(UNITS), 2, SIDE, SIDE)
    found = project_units(model, pixels, "3", torch.tensor(UNITS))
    conv1, conv2 = net[0], net[3]
    with torch.no_grad():
        rectified = F.relu(conv1(pixels))
        pooled, switches = nn.MaxPool2d(2, return_indices=True)(rectified)
        seed = torch.zeros(len(UNITS), 5, *pooled.shape[-2:])
        for row, (c, y, x) in enumerate(UNITS):
            seed[row, c, y, x] = 1.0
        back = F.conv_transpose2d(seed, conv2.weight, padding=1)
        back = nn.MaxUnpool2d(2)(back, switches, output_size=rectified.shape[-2:])
        back = back.clamp(min=0)  # DeconvNet at the ReLU: the positive part passes
        expected = F.conv_transpose2d(back, conv1.weight, padding=1)
    torch.testing.assert_close(found.maps, expected, rtol=0, atol=1e-6)
    assert (found.maps != 0).any()


def test_display_maps_zero_to_grey():
    shown = display(torch.tensor([[[-2.0, 0.0, 1.0]]]))
    torch.testing.assert_close(shown, torch.tensor([[[0.0, 0.5, 0.75]]]))
    assert (display(torch.zeros(1, 2, 2)) == 0.5).all()


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_dir):
    from convsight.data import load_mnist

    folder = tmp_path_factory.mktemp("digits")
    images, _ = load_mnist("test", mnist_dir)
    for i in range(5):
        Image.fromarray(images[i].numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_command_writes_grids_arrays_and_json(digits, tmp_path):
    out = tmp_path / "out"
    args = ["projections", "mnist-cnn", "--layer", "features.3", "--channels", "0-2"]
    args += ["--dataset", str(digits), "--top-k", "3", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "projections.json").read_text())
    assert summary["layer"] == "features.3" and summary["dataset_size"] == 5
    assert [row["channel"] for row in summary["channels"]] == [0, 1, 2]
    for row in summary["channels"]:
        with Image.open(out / row["grid"]) as grid:
            assert grid.size == (3 * 112 + 2 * 4, 2 * 112 + 4)
        assert len(row["examples"]) == 3
        example = row["examples"][0]
        assert example["image"].endswith(".png") and set(example["unit"]) == {"y", "x"}
        assert len(example["box"]) == 4 and isinstance(example["score"], float)
    with np.load(out / "projections.npz") as arrays:
        assert arrays["projections"].shape == (3, 3, 1, 28, 28)
        assert arrays["boxes"].shape == (3, 3, 4)
        first = arrays["projections"][0, 0]
        top, left, bottom, right = arrays["boxes"][0, 0]
    share, noise = high_frequency_share(torch.from_numpy(first[:, top:bottom, left:right]))
    example = summary["channels"][0]["examples"][0]
    assert (example["high_frequency_share"], example["white_noise_share"]) == (share, noise)
    texture = summary["high_frequency"]
    assert texture["projections_measured"] == 9 and 0 < texture["mean_share"] < 1
    assert not list(out.rglob("*.part"))


def test_high_frequency_share_tells_noise_and_checkerboards_from_smooth_maps():
    torch.manual_seed(0)
    share, noise = high_frequency_share(torch.randn(3, 96, 80))
    assert noise == pytest.approx(1 - torch.pi * 0.25**2, abs=0.01)  # the disc's complement
    assert share == pytest.approx(noise, abs=0.02)
    checkerboard = (torch.arange(40)[:, None] + torch.arange(40)[None, :]) % 2
    assert high_frequency_share(checkerboard[None].double())[0] > 0.999
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    blob = torch.exp(-((y - 20) ** 2 + (x - 17) ** 2) / (2 * 5.0**2))
    assert high_frequency_share(torch.stack([blob, 2 * blob]))[0] < 1e-3
    assert high_frequency_share(torch.ones(1, 8, 8)) is None  # no energy once the mean is gone
    assert high_frequency_share(torch.randn(3, 1, 9)) is None  # a box clipped to one row
    assert high_frequency_share(torch.randn(1, 7, 30)) is None  # too small to tell
    assert high_frequency_share(torch.randn(1, 8, 8)) is not None
    opposite = torch.stack([blob, -blob])  # colours that cancel in the mean
    assert high_frequency_share(opposite) is None


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"--layer": "features.9"}, "unknown layer 'features.9'"),
        ({"--channels": "64"}, "the layer has 64 channels"),
        ({"--layer": "classifier.1"}, "not channel maps"),
        ({"--dataset": "empty"}, "no images in dataset folder"),
    ],
)
def test_command_refuses_bad_input_before_writing(digits, tmp_path, change, fragment):
    (tmp_path / "empty").mkdir()
    options = {"--layer": "features.3", "--channels": "0", "--dataset": str(digits)}
    options.update(change)
    if options["--dataset"] == "empty":
        options["--dataset"] = str(tmp_path / "empty")
    out = tmp_path / "out"
    args = ["projections", "mnist-cnn", *(v for kv in options.items() for v in kv)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not out.exists()


def test_result_holds_the_arrays_and_its_json_is_projections_json(digits, tmp_path):
    from convsight.models import load_model
    from convsight.studies.projections import (
        ProjectionsRequest,
        ProjectionsResult,
        write_projections,
    )

    request = ProjectionsRequest("features.3", digits, [0, 1], top_k=2, out=tmp_path / "out")
    result = write_projections(load_model("mnist-cnn"), request)
    assert isinstance(result, ProjectionsResult) and result.examples.channels == [0, 1]
    assert len(result.projections) == 2 and result.projections[0].projections.maps.dim() == 4
    saved = json.loads((tmp_path / "out" / "projections.json").read_text())
    assert saved == json.loads(json.dumps(result.to_json()))
    assert sorted(p.name for p in result.files)[-2:] == ["projections.json", "projections.npz"]
