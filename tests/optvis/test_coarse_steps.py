"""Coarse steps: the image drawn small from its low frequencies (a band-limited sampling of
the full image), the schedule of sizes, the model seeing small inputs, a fixed-size model
falling back with a note; stopping once flat; the cheap channel settings of the atlas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard
from convsight.optvis import render_channels, render_classes, settings_for
from convsight.optvis.callbacks import CoarseSteps, RenderState
from convsight.optvis.objectives import channel
from convsight.optvis.param import FourierImage, PhaseImage
from convsight.optvis.recipes import row_generators
from convsight.optvis.settings import cheap_settings


def _low_only(image: FourierImage, keep: int) -> None:
    """Zero every frequency of ``image``'s spectrum at or above ``keep`` cycles per image."""
    h, w = image.size
    fy = torch.fft.fftfreq(h) * h
    fx = torch.arange(image.spectrum.shape[-2]).float()
    low = (fy.abs()[:, None] < keep) & (fx[None, :] < keep)
    with torch.no_grad():
        image.spectrum.mul_(low[None, None, :, :, None])


@pytest.mark.parametrize("kind", [FourierImage, PhaseImage])
def test_a_coarse_image_samples_the_full_image_of_its_low_frequencies(tiny, kind):
    image = kind.normal(tiny, row_generators([3, 4]), (32, 32), 1.0, decorrelate=True)
    if kind is FourierImage:
        _low_only(image, 8)  # what a 16x16 image holds (below its Nyquist frequency)
    full = image.pixels().detach()
    image.resolution = 0.5
    assert image.drawn_size() == (16, 16)
    half = image.pixels().detach()
    assert half.shape == (2, 3, 16, 16)
    if kind is FourierImage:  # the same picture, every other pixel
        torch.testing.assert_close(half, full[:, :, ::2, ::2], atol=1e-5, rtol=0)
    else:  # the phase image standardizes the small image on its own; still the same layout
        corr = torch.corrcoef(torch.stack([half.flatten(), full[:, :, ::2, ::2].flatten()]))
        assert float(corr[0, 1]) > 0.8  # (its high frequencies are missing: 0.88 here)
    image.resolution = 0.25  # 8 px would be below the smallest side drawn
    assert image.drawn_size() == (16, 16)


def test_coarse_steps_draw_a_quarter_then_half_then_full_size(tiny):
    image = FourierImage.normal(tiny, row_generators([0]), (64, 64))
    state = RenderState(channel("features.0", [0]), image, steps=8, batch=1)
    schedule, sizes = CoarseSteps(0.5), []
    for step in range(8):
        state.step = step
        schedule.start_step(state)
        sizes.append(image.drawn_size()[0])
    assert sizes == [16, 16, 32, 32, 64, 64, 64, 64]
    schedule.finish(state)
    assert image.pixels().shape[-1] == 64


def test_a_render_with_coarse_steps_runs_small_passes_and_returns_full_images(tiny):
    seen: list[int] = []
    handle = tiny.module.features[0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[-1])
    )
    try:
        result = render_channels(
            tiny, "features.3", [0, 2], steps=8, size=64, pad=0, jitter=0, scales=(), angles=(),
            jitter_after=0, coarse_steps=0.5,
        )  # fmt: skip
    finally:
        handle.remove()
    assert result.images.shape == (2, 3, 64, 64)
    # after the probes: 2 steps at 16 px, 2 at 32, 4 at 64, the final values at 64
    assert seen[-9:] == [16, 16, 32, 32, 64, 64, 64, 64, 64]
    assert "every step at full size" not in result.description
    plain = render_channels(tiny, "features.3", [0, 2], steps=8, size=64, seed=0)
    assert not torch.allclose(plain.images, result.images)


def test_a_model_that_takes_only_its_own_size_renders_every_step_full_and_says_so():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 3))
    card = ModelCard(name="flat", arch="test:flat", input_size=(32, 32), channels=3,
                     mean=(0.5,) * 3, std=(0.25,) * 3, labels=["a", "b", "c"])  # fmt: skip
    flat = Model(net, card)
    result = render_classes(flat, [1], steps=4, coarse_steps=0.5, class_objective="logit")
    assert "every step at full size" in result.description
    assert "does not take 16x16 images" in result.description
    same = render_classes(flat, [1], steps=4, class_objective="logit")
    torch.testing.assert_close(result.images, same.images)


def test_coarse_steps_are_checked():
    with pytest.raises(ConvsightError, match=r"coarse-steps must be in \[0, 1\)"):
        settings_for("robust", coarse_steps=1.0)
    with pytest.raises(ConvsightError, match="fourier and maco parameterizations only"):
        settings_for("robust", coarse_steps=0.5, param="pixel")


def test_the_cheap_channel_settings_apply_where_they_can_and_say_what_did_not():
    robust = settings_for("robust", steps=16)
    cheap, note = cheap_settings(robust, bf16_native=True)
    assert (cheap.precision, cheap.stop_when_flat, cheap.coarse_steps, note) == ("bf16", 16, 0, "")
    cheap, note = cheap_settings(robust, bf16_native=False)
    assert (cheap.precision, cheap.stop_when_flat) == ("fp32", 16)
    assert "no native bfloat16" in note
    assert cheap.steps == robust.steps and cheap.lr == robust.lr  # nothing else changes


STILL = dict(pad=0, jitter=0, scales=(), angles=(), jitter_after=0, seed=1)


def test_a_render_stops_once_its_objective_is_flat_and_says_after_how_many_steps(tiny):
    flat = render_channels(tiny, "features.3", [0, 1], steps=40, lr=1e-9, stop_when_flat=8, **STILL)
    assert flat.steps_run == 9  # steps 0..8: the first at which 8 steps back is known
    assert flat.trace is not None and flat.trace.shape == (9, 2)
    rising = render_channels(tiny, "features.3", [0, 1], steps=12, stop_when_flat=8, **STILL)
    assert rising.steps_run == 12
    assert bool((rising.trace[-1] > rising.trace[-9] * 1.01).any())
    with pytest.raises(ConvsightError, match="stop-when-flat must be >= 0"):
        settings_for("robust", stop_when_flat=-1)
