"""Class models on any classifier (issue 25): a flatten + dense head at a fixed,
non-square size renders with every class objective and preset, the views it sees are brought
back to its size, and a render size it cannot take is refused in one sentence."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.recipes import build, class_objective
from convsight.optvis.render import render_channels, render_classes
from convsight.optvis.settings import CLASS_OBJECTIVES, settings_for
from convsight.optvis.transforms import CenterCrop
from convsight.studies.optvis import MaximizeRequest, maximize

pytestmark = pytest.mark.slow

runner = CliRunner()


def spectrogram_net() -> nn.Module:
    """A grey 40 x 120 spectrogram CNN: conv, pool, conv, pool, flatten, dense."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 10 * 30, 3),
    )


class SmallRGB(nn.Module):
    """A 24 x 40 RGB CNN with batch norm and a dropout + dense head, the dense layer reading
    the feature map flattened (``x.flatten(1)`` in its forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.dropout, self.fc = nn.Dropout(0.2), nn.Linear(8 * 12 * 20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).flatten(1)))


def _spectrogram() -> Model:
    torch.manual_seed(0)
    return Model.from_module(
        spectrogram_net(), input_size=(40, 120), channels=1, mean=0.5, std=0.25,
        labels=["siren", "dog", "rain"],
    )  # fmt: skip


def _rgb() -> Model:
    torch.manual_seed(1)
    module = SmallRGB()
    with torch.no_grad():  # batch norm statistics that are not the identity
        module.features[1].running_mean.uniform_(-0.2, 0.2)
        module.features[1].running_var.uniform_(0.5, 2.0)
    return Model.from_module(module, input_size=(24, 40), mean=0.45, std=0.22)


NETS = {"spectrogram": _spectrogram, "rgb": _rgb}


@pytest.fixture(scope="module", params=list(NETS))
def net(request) -> Model:
    return NETS[request.param]()


@pytest.mark.parametrize("preset", ["paper", "robust"])
@pytest.mark.parametrize("objective", CLASS_OBJECTIVES)
def test_every_class_objective_and_preset_renders_at_the_models_size(net, objective, preset):
    classes = [0, 2]

    def rendered(steps: int, seed: int = 3, **overrides):
        return render_classes(
            net, classes, preset=preset, seed=seed, steps=steps, class_objective=objective,
            **overrides,
        )  # fmt: skip

    end = rendered(12)
    assert end.images.shape == (2, net.card.channels, *net.card.input_size)
    assert torch.isfinite(end.images).all() and torch.isfinite(end.values).all()
    assert objective[:6] in end.description.replace("log_softmax", "logsoftmax")
    if preset == "paper":  # no transforms: the objective at step 0 is the start's own
        assert (end.values > end.trace[0]).all(), (end.trace[0], end.values)
        return
    # The robust preset maximizes the objective's mean over its random views (a flatten +
    # dense head is not shift-invariant, so the unmoved image's score alone may fall): that
    # mean, over the same 16 views of the start and of the end images.
    start = rendered(1, lr=1e-12).images

    def mean_over_views(images: torch.Tensor) -> torch.Tensor:
        return rendered(1, seed=11, lr=1e-12, views=16, init_pixels=images).trace[0]

    before, after = mean_over_views(start), mean_over_views(end.images)
    assert (after > before).all(), (before, after)


def _conv(model: Model) -> str:
    return "0" if isinstance(model.module, nn.Sequential) else "features.0"


def test_views_are_cropped_back_only_when_the_objective_needs_the_models_size(net, tiny):
    settings = settings_for("robust", "class")
    cossim = class_objective(net, [1], "cossim")
    assert "cossim" in cossim.description  # the direction on the head's input, not a fallback
    recipe = build(net, cossim, 1, settings)
    assert isinstance(recipe.transforms[-1], CenterCrop)
    assert recipe.transforms[-1].size == net.card.input_size
    # a conv channel, and any objective on a model that pools adaptively (tiny), take the
    # padded views as they are
    for model, objective in (
        (net, obj.channel(_conv(net), [0])),
        (tiny, obj.channel("features.0", [0])),
        (tiny, class_objective(tiny, [1], "cossim")),
    ):
        recipe = build(model, objective, 1, settings)
        assert not any(isinstance(t, CenterCrop) for t in recipe.transforms), objective


def test_another_size_is_refused_where_the_head_needs_the_models_own(net, tmp_path):
    with pytest.raises(ConvsightError, match=r"takes only \d+x\d+ images .* leave --size out"):
        render_classes(net, [0], preset="robust", steps=1, size=32)
    result = render_channels(net, _conv(net), [0], preset="robust", steps=1, size=32)
    assert result.images.shape[-2:] == (32, 32)  # a conv channel takes any size
    head = "7" if isinstance(net.module, nn.Sequential) else "fc"
    with pytest.raises(ConvsightError, match="takes only"):  # the head's channels do not
        request = MaximizeRequest(head, [0], settings_for(size=32))
        maximize(net, request, out=tmp_path / "max", show_progress=False)
    assert not (tmp_path / "max").exists()


def _export(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.randn(1, 1, 40, 120),), str(path), dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    return path


def test_classviz_cli_on_an_onnx_spectrogram_net(tmp_path):
    """The finding's command: an ONNX export, labels from a file, the default preset."""
    torch.manual_seed(0)
    model = _export(spectrogram_net(), tmp_path / "specnet.onnx")
    labels = tmp_path / "classes.txt"
    labels.write_text("siren\ndog\nrain\n")
    common = [
        "classviz", model, "--labels", labels, "--mean", "0.5", "--std", "0.25",
        "--classes", "siren", "--steps", "8", "--quiet",
    ]  # fmt: skip
    out = tmp_path / "out"
    result = runner.invoke(app, [str(a) for a in [*common, "--out", out]])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"].startswith("cossim(siren)")
    assert summary["settings"]["class_objective"] == "cossim"
    refused = tmp_path / "refused"
    args = [*common, "--size", "64", "--out", refused]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "takes only 40x120 images" in result.stderr and "Traceback" not in result.output
    assert not refused.exists()  # refused before the output folder was made
