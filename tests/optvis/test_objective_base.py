"""The @objective decorator: a function of the context becomes an objective maker with a
description, the layers it reads, its checks and the algebra."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from convsight.errors import ConvsightError
from convsight.layers import forward_to
from convsight.optvis import objectives as obj
from convsight.optvis import render_settings, settings_for
from convsight.optvis.objective_base import OUTPUT, Context, Objective, Rows, objective


@objective(layer="layer", index="channels")
def peak(ctx: Context, layer: str, channels: Rows, scale: float = 1.0) -> torch.Tensor:
    """The largest activation of each row's channel."""
    act = ctx.acts[layer].flatten(2).amax(2)
    return scale * act.gather(1, ctx.pick(channels, "channels")[:, None])[:, 0]


@objective("brightness", penalty=True)
def brightness(ctx: Context) -> torch.Tensor:
    return ctx.image.flatten(1).mean(1)


def test_a_decorated_function_is_an_objective_with_description_layers_and_algebra(tiny):
    made = peak("features.3", [1, 5])
    assert isinstance(made, Objective)
    assert made.description == "peak(features.3, [1, 5])"
    assert peak("features.3", 2, scale=2.0).description == "peak(features.3, 2, scale=2.0)"
    assert peak("features.3", 2, scale=1.0).description == "peak(features.3, 2)"
    assert made.layers == ("features.3",) and not made.penalty and made.channel_of is None
    combo = made - 0.5 * brightness()
    assert combo.description == "peak(features.3, [1, 5]) - 0.5*brightness"
    x = torch.randn(2, 3, 32, 32)
    ctx = Context(forward_to(tiny.module, x, ["features.3"]), tiny.denormalize(x), x)
    expected = forward_to(tiny.module, x, ["features.3"])["features.3"].flatten(2).amax(2)
    assert torch.equal(made(ctx), expected[[0, 1], [1, 5]])
    assert torch.allclose(combo(ctx), made(ctx) - 0.5 * tiny.denormalize(x).flatten(1).mean(1))
    assert list(inspect.signature(peak).parameters) == ["layer", "channels", "scale"]
    assert peak.__doc__ == "The largest activation of each row's channel."


def test_index_argument_is_checked_before_the_first_step(tiny):
    def no_step(step, values):
        raise AssertionError("a step ran")

    settings = settings_for("paper", param="pixel", steps=2)
    with pytest.raises(ConvsightError, match="channel 16 is out of range: layer 'features.3'"):
        render_settings(tiny, peak("features.3", [0, 16]), 2, settings, callback=no_step)
    with pytest.raises(ConvsightError, match="3 channels given for a batch of 2 rows"):
        render_settings(tiny, peak("features.3", [0, 1, 2]), 2, settings, callback=no_step)
    result = render_settings(tiny, peak("features.3", [0, 1]), 2, settings)
    assert result.description == "peak(features.3, [0, 1]) - 0.1*L1"


def test_descriptions_given_as_text_format_or_function_and_the_output_layer():
    @objective("shifted({layer}, {rows})", layer="layer")
    def shifted(ctx: Context, layer: str, rows: Rows) -> torch.Tensor:
        return ctx.acts[layer].flatten(1).mean(1)

    @objective(lambda classes, power: f"top({len(classes)})", layer=OUTPUT, index="classes")
    def top(ctx: Context, classes: Rows, power: float = 2.0) -> torch.Tensor:
        return ctx.acts[OUTPUT].flatten(1).mean(1)

    assert shifted("a.b", list(range(9))).description == "shifted(a.b, [0, 1, ..., 8] (9 rows))"
    made = top([0, 1, 5])
    assert made.description == "top(3)" and made.layers == (OUTPUT,)
    with pytest.raises(ConvsightError, match="class 5 is out of range: the model output"):
        made.check({OUTPUT: (4,)}, 3)


def test_class_score_is_one_family_of_three_kinds(tiny):
    x = torch.randn(2, 3, 32, 32)
    logits = tiny.module(x)
    ctx = Context({OUTPUT: logits}, tiny.denormalize(x), x)
    picked = logits[[0, 1], [3, 1]]
    assert torch.equal(obj.class_score([3, 1])(ctx), picked)
    assert torch.equal(obj.class_score([3, 1], "margin")(ctx), picked - logits.mean(1))
    log_p = obj.class_score([3, 1], "logsoftmax", label="bird, dog")
    assert log_p.description == "log_softmax(bird, dog)"
    assert torch.allclose(log_p(ctx), logits.log_softmax(1)[[0, 1], [3, 1]])
    assert obj.class_score(2, "margin").description == "margin(2)"
    unknown: Any = "softmax"
    with pytest.raises(ConvsightError, match="unknown class score 'softmax'"):
        obj.class_score([1], unknown)
