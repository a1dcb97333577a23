"""Deletion / insertion curves and the model-randomization check."""

from __future__ import annotations

import math

import pytest
import torch

from convsight.attribution import GradCAM, Saliency
from convsight.errors import ConvsightError
from convsight.metrics import (
    auc,
    deletion,
    gaussian_blur,
    insertion,
    model_randomization,
    randomization_layers,
    spearman,
)
from tests.conftest import hook_count


def _pixels(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _probability(model, pixels, target):
    with torch.no_grad():
        return model.module(model.normalize(pixels)).softmax(1)[:, target]


def test_auc_is_the_trapezoid_area():
    assert torch.allclose(auc(torch.tensor([[1.0, 1.0, 1.0]])), torch.tensor([1.0]))
    assert torch.allclose(auc(torch.linspace(1, 0, 11).view(1, -1)), torch.tensor([0.5]))
    with pytest.raises(ConvsightError):
        auc(torch.ones(1, 1))


def _reference_curve(model, image, saliency, target, step, start, finish):
    """RISE's loop, one step at a time, one image."""
    h, w = image.shape[-2:]
    order = torch.argsort(saliency.flatten(), descending=True, stable=True)
    current = start.clone().view(3, -1)
    finish = finish.reshape(3, -1)
    steps = math.ceil(h * w / step)
    scores = []
    for k in range(steps + 1):
        scores.append(float(_probability(model, current.view(1, 3, h, w), target)))
        chosen = order[k * step : (k + 1) * step]
        current[:, chosen] = finish[:, chosen]
    return torch.tensor(scores)


@pytest.mark.slow
def test_deletion_and_insertion_match_the_step_by_step_protocol(tiny):
    x = _pixels()
    saliency = Saliency(tiny).heatmap(x, [0, 1, 2])
    targets = [0, 1, 2]
    dele = deletion(tiny, x, saliency, targets, step=100, baseline=0.0, batch_size=7)
    ins = insertion(tiny, x, saliency, targets, step=100, batch_size=5)
    steps = math.ceil(32 * 32 / 100)
    assert dele.scores.shape == ins.scores.shape == (3, steps + 1)
    assert dele.fractions[0] == 0 and dele.fractions[-1] == 1
    blurred = gaussian_blur(x)
    for i, t in enumerate(targets):
        ref = _reference_curve(tiny, x[i], saliency[i], t, 100, x[i], torch.zeros_like(x[i]))
        assert torch.allclose(dele.scores[i], ref, atol=1e-5)
        ref = _reference_curve(tiny, x[i], saliency[i], t, 100, blurred[i], x[i])
        assert torch.allclose(ins.scores[i], ref, atol=1e-5)
    assert torch.allclose(dele.auc, auc(dele.scores))
    # the first and last points: the image and the baseline (deletion), blurred and image
    probs = _probability(tiny, x, torch.tensor(targets)).diagonal()
    assert torch.allclose(dele.scores[:, 0], probs, atol=1e-5)
    assert torch.allclose(ins.scores[:, -1], probs, atol=1e-5)


@pytest.mark.slow
def test_curves_are_batched_and_accept_cam_maps_and_default_baseline(tiny):
    x = _pixels(4)
    cams = GradCAM(tiny).attribute(x, 1)  # N x 1 x 16 x 16: upsampled to the image
    batch = deletion(tiny, x, cams, 1, step=64)
    one = torch.cat(
        [deletion(tiny, x[i : i + 1], cams[i : i + 1], 1, step=64).scores for i in range(4)]
    )
    assert torch.allclose(batch.scores, one, atol=1e-6)
    grey = deletion(tiny, x, cams, 1, step=64, baseline=0.5)  # the card's mean colour
    assert torch.allclose(batch.scores, grey.scores, atol=1e-6)
    fast = insertion(tiny, x, cams, 1, step=64, engine="frozen")
    assert torch.allclose(fast.scores, insertion(tiny, x, cams, 1, step=64).scores, atol=1e-5)


def test_gaussian_blur_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = _pixels(2)
    assert torch.allclose(gaussian_blur(x, 11, 5.0), tv_blur(x, [11, 11], [5.0, 5.0]), atol=1e-5)


def test_curve_errors(tiny):
    x = _pixels(2)
    with pytest.raises(ConvsightError, match="one map per image"):
        deletion(tiny, x, torch.rand(3, 32, 32), 0)
    with pytest.raises(ConvsightError, match="at least one pixel"):
        insertion(tiny, x, torch.rand(2, 32, 32), 0, step=0)
    with pytest.raises(ConvsightError, match="out of range"):
        deletion(tiny, x, torch.rand(2, 32, 32), 9)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 50), generator=g).float()
    b = a + torch.randint(0, 3, (3, 50), generator=g).float()
    ours = spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-6)


def test_model_randomization_cascades_on_a_copy(tiny):
    x = _pixels(2)
    state = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    layers = randomization_layers(tiny.module)
    assert layers == ["classifier.1", "features.3", "features.0"]
    result = model_randomization(tiny, "saliency", x, [0, 1], seed=0, keep_maps=True)
    assert result.layers == layers and result.spearman.shape == (3, 2)
    assert len(result.maps) == 4
    assert all(-1 <= v <= 1 for v in result.mean())
    assert result.mean()[-1] < 0.9  # a gradient map changes with the weights
    for k, v in tiny.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert hook_count(tiny.module) == 0
    again = model_randomization(tiny, "saliency", x, [0, 1], seed=0)
    assert torch.allclose(again.spearman, result.spearman)
    data = result.to_dict()
    assert data["method"] == "saliency" and len(data["stages"]) == 3


def test_model_randomization_errors(tiny):
    from convsight.errors import UnknownLayerError

    with pytest.raises(UnknownLayerError):
        model_randomization(tiny, "gradcam", _pixels(1), 0, layers=["head"])
    with pytest.raises(ConvsightError, match="unknown method"):
        model_randomization(tiny, "lime", _pixels(1), 0)


def test_model_randomization_stages_pick_evenly_spaced_cuts(tiny):
    result = model_randomization(tiny, "gradcam", _pixels(2), 0, stages=2)
    assert result.layers == ["features.3", "features.0"]
    full = model_randomization(tiny, "gradcam", _pixels(2), 0)
    assert torch.allclose(result.spearman[-1], full.spearman[-1], equal_nan=True)
