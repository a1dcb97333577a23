"""convsight.targets: what each built-in target scores, how command-line text becomes one, and
the one sentence for a target that does not fit the model."""

from __future__ import annotations

import pytest
import torch

from convsight.attribution import IntegratedGradients, Occlusion, Saliency
from convsight.engines import forward_scores
from convsight.errors import ConvsightError
from convsight.metrics import deletion
from convsight.targets import (
    ClassTarget,
    FunctionTarget,
    MarginTarget,
    OutputTarget,
    PerImage,
    SegmentationTarget,
    parse_target,
    repeated,
    resolve_targets,
)

SCORES = torch.tensor([[1.0, 5.0, 2.0, -1.0], [4.0, 0.5, 3.0, 2.0]])


def test_class_and_margin_scores(tiny):
    assert ClassTarget("dog").bind(tiny, 2)(SCORES).tolist() == [5.0, 0.5]
    assert ClassTarget(["dog", 3]).bind(tiny, 2)(SCORES).tolist() == [5.0, 2.0]
    assert MarginTarget("dog").bind(tiny, 2)(SCORES).tolist() == [3.0, -3.5]  # 5-2, 0.5-4
    with pytest.raises(ConvsightError, match="3 targets for 2 images"):
        ClassTarget([0, 1, 2]).bind(tiny, 2)
    with pytest.raises(ConvsightError, match="unknown class 'dgo'.*did you mean dog"):
        MarginTarget("dgo").bind(tiny, 1)


def test_segmentation_scores_sum_over_the_mask_or_the_predicted_pixels():
    out = torch.zeros(1, 3, 2, 2)
    out[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out[0, 2, 0, 0] = 9.0  # pixel (0, 0) is predicted as class 2, the others as class 1
    target = SegmentationTarget(1)
    assert target(out).tolist() == [2.0 + 3.0 + 4.0]
    mask = torch.tensor([[True, False], [False, True]])
    assert SegmentationTarget(1, mask)(out).tolist() == [1.0 + 4.0]
    per_image = SegmentationTarget(1, torch.stack([mask, ~mask]))
    assert per_image[1:2](out).tolist() == [2.0 + 3.0]  # the second image's own mask


def test_output_function_and_per_image_targets(tiny):
    assert OutputTarget(2)(SCORES).tolist() == [2.0, 3.0]
    assert OutputTarget(-1)(torch.arange(6.0).view(2, 3)).tolist() == [2.0, 5.0]
    total = FunctionTarget(lambda out: out.sum(1))
    assert total(SCORES).tolist() == [7.0, 9.5]
    with pytest.raises(ConvsightError, match="one score per row"):
        FunctionTarget(lambda out: out)(SCORES)
    both = resolve_targets(tiny, [OutputTarget(0), "fish"], 2)
    assert isinstance(both, PerImage) and both(SCORES).tolist() == [1.0, 3.0]
    rows = repeated(both, 2, 3)
    assert rows(SCORES.repeat_interleave(3, 0)).tolist() == [1.0] * 3 + [3.0] * 3


@pytest.mark.parametrize(
    ("text", "kind", "what"),
    [
        ("dog", str, "dog"),
        ("3", int, 3),
        ("class:dog", ClassTarget, "class dog"),
        ("margin:1", MarginTarget, "margin of class 1"),
        ("output:0", OutputTarget, "output 0"),
        ("segment:road", SegmentationTarget, "road summed over its predicted pixels"),
        ("segment:4:mask.png", SegmentationTarget, "class 4 summed over a mask"),
    ],
)
def test_command_line_forms(text, kind, what):
    target = parse_target(text)
    assert isinstance(target, kind)
    assert target == what if kind in (str, int) else target.describe() == what


@pytest.mark.parametrize(
    ("text", "message"),
    [("output:x", "an output is a whole number"), ("segment:", "names nothing after")],
)
def test_command_line_forms_that_are_refused(text, message):
    with pytest.raises(ConvsightError, match=message):
        parse_target(text)


def test_a_class_target_on_per_pixel_scores_says_what_to_use_instead():
    with pytest.raises(ConvsightError, match="use a SegmentationTarget"):
        ClassTarget(torch.tensor([0]))(torch.zeros(1, 3, 4, 4))


def test_the_margin_is_explained_by_its_own_gradient(tiny):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    pixels = x.clone().requires_grad_(True)
    scores = tiny.module(tiny.normalize(pixels))
    others = scores.clone()
    others[:, 1] = float("-inf")
    (grad,) = torch.autograd.grad((scores[:, 1] - others.amax(1)).sum(), pixels)
    torch.testing.assert_close(Saliency(tiny).attribute(x, MarginTarget("dog")), grad.abs())


def test_a_function_target_runs_through_path_and_occlusion_methods(tiny):
    """Integrated Gradients repeats each image's rows; occlusion scores many occluded rows:
    a target of the whole output gives what the same class target gives."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    dog = FunctionTarget(lambda out: out[:, 1])
    for method, options in ((IntegratedGradients, {"steps": 8}), (Occlusion, {"window": 8})):
        expected = method(tiny).attribute(x, "dog", **options)
        torch.testing.assert_close(method(tiny).attribute(x, dog, **options), expected)


def test_probabilities_need_class_scores_and_curves_score_outputs_as_they_are(tiny):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ConvsightError, match="probabilities need class scores"):
        forward_scores(tiny, x, OutputTarget(0), output="probability")
    curves = deletion(tiny, x, torch.rand(1, 32, 32), target=OutputTarget(0), step=256)
    assert curves.run["score"] == "logit"
    with torch.no_grad():
        first = float(tiny.module(tiny.normalize(x))[0, 0])
    assert float(curves.scores[0, 0]) == pytest.approx(first, rel=1e-5)


def test_a_class_model_of_any_target(tiny):
    """render_targets: a class target renders what render_classes renders with the logit
    objective (same seeds, same steps); an output and a function render too."""
    from convsight.optvis.render import render_classes, render_targets
    from convsight.optvis.settings import settings_for

    settings = settings_for("paper", "class", steps=3, size=32)
    by_class = render_classes(tiny, ["dog", "fish"], settings=settings, seed=0)
    by_target = render_targets(
        tiny, [ClassTarget("dog"), ClassTarget("fish")], settings=settings, seed=0
    )
    assert by_target.images.shape == by_class.images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(by_target.values, by_class.values)
    mixed = render_targets(tiny, [OutputTarget(3), lambda out: -out[:, 0]], settings=settings)
    assert mixed.images.shape[0] == 2 and torch.isfinite(mixed.values).all()


def test_a_mask_file_is_read_in_the_photos_frame(tmp_path):
    """A mask PNG goes through the resize and centre crop a photo of its size goes through,
    so it stays on the pixels it was drawn on; white (128 and up) is in."""
    import numpy as np
    from PIL import Image

    from convsight.data import load_image_tensor
    from convsight.data.images import load_mask
    from convsight.models import ModelCard

    drawn = np.zeros((48, 80), dtype=np.uint8)
    drawn[10:30, 20:50] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(drawn).save(path)
    card = ModelCard("m", "test:m", (32, 32), 3, mean=(0.5,) * 3, std=(0.25,) * 3)
    mask = load_mask(path, card)
    assert mask.shape == (32, 32) and mask.dtype == torch.bool and mask.any()
    as_photo = load_image_tensor(path, card)[0, 0] >= 0.5
    assert torch.equal(mask, as_photo)
    bound = SegmentationTarget(0, mask=path).bind(_FakeModel(card), 1)
    assert isinstance(bound.mask, torch.Tensor) and torch.equal(bound.mask, mask)


class _FakeModel:
    """What a target's bind reads of a model: its card and output shape."""

    def __init__(self, card) -> None:
        self.card = card
        self.output_shape = (3, 32, 32)

    def class_index(self, target):
        return int(target)
