"""Feature visualization: objectives rise, batching and truncation change nothing, bad input
fails before any step, hooks are released."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.layers import capture, forward_to
from convsight.models import Model, ModelCard
from convsight.optvis import (
    build,
    class_mean_images,
    parse_channels,
    render,
    render_channels,
    render_classes,
    render_settings,
    settings_for,
)
from convsight.optvis import objectives as obj
from convsight.optvis.objectives import OUTPUT, Context
from convsight.optvis.param import FourierImage
from convsight.optvis.recipes import make_param, paper, row_generators
from tests.conftest import hook_count

runner = CliRunner()

# Small, fast settings on the 32x32 tiny model.
PLAIN = dict(param="pixel", optimizer="adam", lr=0.05, init_std=0.5, l1=0.0, steps=8)


def plain(**changes):
    return settings_for("paper", **{**PLAIN, **changes})


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        obj.channel("features.3", [1, 5]),
        obj.neuron("features.3", [2, 3]),
        obj.layer("features.3"),
        obj.class_score([0, 2]),
        obj.class_score([1, 3], "margin"),
        obj.class_score([2, 0], "logsoftmax"),
        obj.direction("features.3", torch.linspace(-1, 1, 16)),
        obj.diversity("features.3"),
        obj.channel("features.3", 0) - 0.5 * obj.activation_penalty(["features.0"]),
        -obj.l1() - obj.l2() - obj.total_variation() - obj.blur(),
    ],
    ids=lambda o: o.description,
)
def test_each_objective_rises_within_a_few_steps(tiny, objective):
    result = render_settings(tiny, objective, 2, plain())
    assert result.trace.shape == (8, 2)
    assert (result.trace[-1] > result.trace[0]).all(), result.trace[:, :]


@pytest.mark.slow
def test_plain_gradient_ascent_of_the_paper_preset_rises(tiny):
    settings = settings_for("paper", steps=5)
    assert settings.optimizer == "ascent" and settings.l1 == 0.1 and settings.lr == 0.5
    result = render_channels(tiny, "features.3", [0, 3], preset="paper", steps=5)
    assert (result.trace[-1] > result.trace[0]).all()
    assert "0.1*L1" in result.description


def test_objective_algebra_and_descriptions(tiny):
    a, b = obj.channel("features.3", 7), obj.l1()
    combo = a - 0.1 * b
    assert combo.description == "channel(features.3, 7) - 0.1*L1"
    assert (2 * a + a).description == "3*channel(features.3, 7)"
    assert combo.layers == ("features.3",)
    x = torch.randn(3, 3, 32, 32)
    acts = forward_to(tiny.module, x, ["features.3"])
    ctx = Context(acts, tiny.denormalize(x), x)
    assert torch.allclose(combo(ctx), a(ctx) - 0.1 * b(ctx))
    assert torch.allclose((a / 2)(ctx), 0.5 * a(ctx))
    assert combo(ctx).shape == (3,)


@pytest.mark.slow
def test_batched_rendering_equals_one_at_a_time(tiny):
    settings = dict(preset="robust", steps=6, size=32, pad=2, jitter=3, jitter_after=2, views=2)
    batch = render_channels(tiny, "features.3", [1, 4, 7], seed=3, **settings)
    for row, c in enumerate([1, 4, 7]):
        alone = render_channels(tiny, "features.3", [c], seed=3, **settings)
        assert torch.allclose(batch.images[row], alone.images[0], atol=1e-5)
        assert torch.allclose(batch.values[row], alone.values[0], atol=1e-4)
    chunked = render_channels(tiny, "features.3", [1, 4, 7], seed=3, chunk=1, **settings)
    assert torch.allclose(batch.images, chunked.images, atol=1e-5)
    classes = render_classes(tiny, ["cat", 3], steps=4, size=32, seed=1)
    dog = render_classes(tiny, [3], steps=4, size=32, seed=1)
    assert torch.allclose(classes.images[1], dog.images[0], atol=1e-5)


@pytest.mark.slow
def test_log_softmax_class_objective_is_the_log_probability(tiny):
    x = torch.randn(2, 3, 32, 32)
    logits = tiny.module(x)
    ctx = Context({OUTPUT: logits}, tiny.denormalize(x), x)
    value = obj.class_score([3, 1], "logsoftmax")(ctx)
    expected = logits.softmax(1)[[0, 1], [3, 1]].log()
    assert torch.allclose(value, expected, atol=1e-5)
    assert (value < 0).all()
    a = render_classes(tiny, [1], steps=3, size=32, class_objective="logsoftmax")
    b = render_classes(tiny, [1], steps=3, size=32, class_objective="margin")
    assert a.description.startswith("log_softmax(") and not torch.allclose(a.images, b.images)
    with pytest.raises(ConvsightError, match="unknown class objective"):
        settings_for("robust", target="class", class_objective="softmax")


def three_class_16px(net: nn.Module, name: str) -> Model:
    """``net`` as a 16 x 16 RGB classifier of classes a, b, c."""
    card = ModelCard(
        name=name,
        arch=f"test:{name}",
        input_size=(16, 16),
        channels=3,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        labels=["a", "b", "c"],
    )
    return Model(net, card)


def changes_and_repeats_per_row(model, settings, **change):
    """Classes [0, 3] rendered without and with ``change``: the change alters the images,
    the same seed repeats them, and class 3 renders the same alone. Returns the changed."""
    off = render_classes(model, [0, 3], **settings)
    on = render_classes(model, [0, 3], **change, **settings)
    again = render_classes(model, [0, 3], **change, **settings)
    alone = render_classes(model, [3], **change, **settings)
    assert not torch.allclose(off.images, on.images)
    assert torch.equal(on.images, again.images)
    assert torch.allclose(on.images[1], alone.images[0], atol=1e-5)
    return on


@pytest.mark.slow
def test_pixel_noise_is_seeded_per_row_and_changes_the_render(tiny):
    from convsight.optvis.transforms import Noise, RowRandom, standard_transforms

    assert [t.describe() for t in standard_transforms(0, 0, (), (), 0, noise=0.1)] == ["noise(0.1)"]
    assert standard_transforms(0, 0, (), (), 0) == []
    x = torch.full((4, 3, 8, 8), 0.5)  # 2 rows x 2 views, batch row = view * 2 + row
    a = Noise(0.1)(x, RowRandom(row_generators([4, 5]), views=2))
    b = Noise(0.1)(x[:2], RowRandom(row_generators([4]), views=2))
    assert a.shape == (4, 3, 8, 8)
    assert torch.equal(a[[0, 2]], b)  # row 0's two views whatever the other rows
    assert 0.07 < float((a - x).std()) < 0.13
    settings = dict(steps=4, size=32, seed=2, pad=0, jitter=0, jitter_after=0)
    settings.update(scales=(), angles=())
    changes_and_repeats_per_row(tiny, settings, noise=0.2)
    with pytest.raises(ConvsightError, match="noise must be >= 0"):
        settings_for("robust", noise=-0.1)


@pytest.mark.slow
def test_color_shift_is_an_affine_colour_cast_per_view_and_channel(tiny):
    from convsight.optvis.transforms import ColorShift, RowRandom, standard_transforms

    assert [t.describe() for t in standard_transforms(0, 0, (), (), 0, color_shift=0.5)] == [
        "color_shift(0.5)"
    ]
    x = torch.rand(4, 3, 8, 8)
    shifted = ColorShift(0.5)(x, RowRandom(row_generators([0, 1, 2, 3])))
    for view, out in zip(x, shifted, strict=True):
        for channel in range(3):  # out = (in - 0.5) * scale + 0.5 + shift, one pair per channel
            a, b = view[channel].flatten(), out[channel].flatten()
            scale = float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum())
            shift = float(b.mean() - 0.5 - (a.mean() - 0.5) * scale)
            assert torch.allclose(b, (a - 0.5) * scale + 0.5 + shift, atol=1e-5)
            assert math.exp(-0.5) - 1e-4 <= scale <= math.exp(0.5) + 1e-4
            assert abs(shift) <= 0.125 + 1e-4
    assert not torch.allclose(shifted[0, 0], x[0, 0])
    settings = dict(steps=4, size=32, seed=2, pad=0, jitter=0, jitter_after=0)
    settings.update(scales=(), angles=())
    changes_and_repeats_per_row(tiny, settings, color_shift=0.5)
    with pytest.raises(ConvsightError, match="color shift must be >= 0"):
        settings_for("robust", color_shift=-1)


def test_flip_mirrors_about_half_the_views_each_row_on_its_own():
    from convsight.optvis.transforms import Compose, RandomFlip, RowRandom, standard_transforms

    assert [t.describe() for t in standard_transforms(0, 0, (), (), 0, flip=True)] == ["flip"]
    x = torch.rand(2, 3, 8, 8)
    flipped = Compose([RandomFlip()])(x, RowRandom(row_generators([0, 1]), views=16))
    mirrored = [
        torch.allclose(v, torch.flip(x[i % 2], [-1]), atol=1e-6) for i, v in enumerate(flipped)
    ]
    kept = [torch.allclose(v, x[i % 2], atol=1e-6) for i, v in enumerate(flipped)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # one or the other
    assert 8 <= sum(mirrored) <= 24  # about half of 32 views
    alone = Compose([RandomFlip()])(x[1:], RowRandom(row_generators([1]), views=16))
    assert torch.equal(flipped[1::2], alone)


@pytest.mark.slow
def test_ghost_noise_perturbs_the_network_per_row_and_leaves_no_hooks(tiny):
    settings = dict(steps=4, size=32, seed=2, class_objective="margin")
    ghost = changes_and_repeats_per_row(tiny, settings, ghost=0.3)
    assert hook_count(tiny.module) == 0
    # the reported values are the clean network's, not a noisy one's
    logits = tiny.module(tiny.normalize(ghost.images))
    margin = logits[[0, 1], [0, 3]] - logits.mean(1)
    assert torch.allclose(ghost.values, margin, atol=1e-4)
    with pytest.raises(ConvsightError, match="ghost must be >= 0"):
        settings_for("robust", ghost=-0.1)


@pytest.mark.slow
def test_average_returns_the_moving_average_of_the_parameters(tiny):
    settings = plain(steps=1)
    last = render_settings(tiny, obj.class_score([1, 2]), 2, settings)
    averaged = render_settings(tiny, obj.class_score([1, 2]), 2, plain(steps=1, average=0.75))
    start = make_param(tiny, settings, row_generators([0, 1])).pixels().detach()
    expected = (0.75 * start + 0.25 * last.images).clamp(0, 1)  # pixel param: linear
    assert torch.allclose(averaged.images, expected, atol=1e-5)
    with pytest.raises(ConvsightError, match="average must be in"):
        settings_for("robust", average=1.0)


@pytest.mark.slow
def test_coarse_to_fine_keeps_only_the_low_band_then_opens_it(tiny):
    from convsight.optvis.param import rfft2d_freqs

    image = FourierImage.normal(tiny, row_generators([0]), (32, 32), 1.0, decorrelate=False)
    freqs = torch.tensor(rfft2d_freqs(32, 32) / rfft2d_freqs(32, 32).max())
    for band in (0.25, 1.0):
        image.band = band
        t = torch.logit(image.pixels().detach().double()) * 4
        magnitude = torch.fft.rfftn(t, dim=(2, 3), norm="ortho").abs()[0, 0]
        assert float(magnitude[freqs <= band].max()) > 0.1
        high = magnitude[freqs > band]
        assert (high.numel() == 0) or float(high.max()) < 1e-4
    settings = dict(steps=4, size=32, seed=2)
    assert not torch.allclose(
        render_classes(tiny, [1], coarse_to_fine=1.0, **settings).images,
        render_classes(tiny, [1], **settings).images,
    )
    with pytest.raises(ConvsightError, match="coarse-to-fine must be in"):
        settings_for("robust", coarse_to_fine=1.5)
    with pytest.raises(ConvsightError, match="fourier parameterization only"):
        settings_for("robust", coarse_to_fine=0.5, param="pixel")


@pytest.mark.slow
def test_cossim_class_objective_is_dot_times_cosine_on_the_penultimate_layer(tiny):
    from convsight.optvis.recipes import class_objective

    objective = class_objective(tiny, [1, 3], "cossim")
    assert list(objective.layers) == ["classifier.0"]  # the flatten before the last dense layer
    x = torch.randn(2, 3, 32, 32)
    with capture(tiny.module, ["classifier.0"]) as acts:
        tiny.module(x)
    weight = tiny.module.classifier[1].weight.detach()
    vectors = (weight - weight.mean(0))[[1, 3]]
    features = acts["classifier.0"].detach()
    dot = (features * vectors).sum(1)
    cos = torch.nn.functional.cosine_similarity(features, vectors, dim=1)
    value = objective(Context({"classifier.0": features}, tiny.denormalize(x), x))
    assert torch.allclose(value, dot * cos.clamp(min=0.1) ** 2, atol=1e-5)
    result = render_settings(tiny, objective, 2, plain())
    assert (result.trace[-1] > result.trace[0]).all(), result.trace
    scripted = Model(torch.jit.script(tiny.module), tiny.card)  # no nn.Linear to read
    assert class_objective(scripted, [1], "cossim").description.startswith("margin(")


@pytest.mark.slow
def test_batch_norm_prior_is_the_distance_to_the_running_statistics(tiny):
    from convsight.optvis.model_hooks import BatchNormPrior

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    net[1].running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 0.2]))
    model = three_class_16px(net, "bn")
    x = torch.randn(2, 3, 16, 16)
    with BatchNormPrior(net, 1.0) as prior:
        prior.active = True
        net(x)
        value = prior.take(1)
    assert hook_count(net) == 0
    inner = net[0](x)
    mean, var = inner.mean((2, 3)), inner.var((2, 3), unbiased=False)
    expected = (mean - net[1].running_mean).norm(dim=1) + (var - net[1].running_var).norm(dim=1)
    assert torch.allclose(value, expected, atol=1e-5)

    def final_prior(weight):
        images = render_classes(model, [0, 2], steps=20, bn_prior=weight, seed=1).images
        with BatchNormPrior(net, 1.0) as prior:
            prior.active = True
            net(model.normalize(images))
            return prior.take(1)

    assert (final_prior(5.0) < final_prior(0.0)).all()

    # a model without batch norm fails before any step, leaving no hook behind
    def boom(step, values):
        raise AssertionError("no step should run")

    with pytest.raises(ConvsightError, match="needs batch norm layers"):
        render_settings(
            tiny, obj.class_score([0]), 1, plain(ghost=0.1, bn_prior=1.0), callback=boom
        )
    assert hook_count(tiny.module) == 0  # the ghost hooks made just before are gone too
    assert tiny.module.features[0].weight.is_contiguous()
    batch = render_classes(model, [0, 2], steps=4, bn_prior=1.0, seed=1)
    alone = render_classes(model, [2], steps=4, bn_prior=1.0, seed=1)
    assert torch.allclose(batch.images[1], alone.images[0], atol=1e-5)
    assert hook_count(net) == 0


@pytest.mark.slow
def test_maco_param_optimizes_only_the_phase(tiny):
    from convsight.optvis.param import PhaseImage

    result = render_classes(tiny, [1, 2], steps=6, size=32, param="maco", decorrelate=False)
    assert (result.trace[-1] > result.trace[0]).all()
    gens = row_generators([0, 1])
    maco = make_param(tiny, settings_for("robust", param="maco", decorrelate=False), gens)
    assert isinstance(maco, PhaseImage) and maco.params == [maco.phase]
    for pixels in (maco.pixels(), result.images.clamp(1e-6, 1 - 1e-6)):
        t = torch.logit(pixels.double())
        assert torch.allclose(t.flatten(1).mean(1), torch.zeros(2, dtype=t.dtype), atol=1e-3)
        assert torch.allclose(t.flatten(1).std(1), torch.ones(2, dtype=t.dtype), atol=1e-3)
        # the magnitude spectrum is the fixed 1/f profile (up to one factor per row)
        magnitude = torch.fft.rfftn(t, dim=(2, 3), norm="ortho").abs()[..., 1:-1, 1:-1]
        ratio = magnitude / maco.scale[..., 0][..., 1:-1, 1:-1].double()
        assert torch.allclose(ratio, ratio.flatten(1)[:, :1, None, None], rtol=1e-2)
    start = tiny.denormalize(torch.randn(2, 3, 32, 32)).clamp(0, 1)
    again = make_param(tiny, settings_for("robust", param="maco"), gens, init_pixels=start)
    assert isinstance(again, PhaseImage) and again.pixels().shape == (2, 3, 32, 32)


@pytest.mark.slow
def test_truncated_forward_gives_the_full_forward_objective(tiny):
    x = torch.randn(4, 3, 32, 32)
    objective = obj.channel("features.3", [0, 1, 2, 3])
    truncated = forward_to(tiny.module, x, ["features.3"])
    with capture(tiny.module, ["features.3"]) as full:
        tiny.module(x)
    pixels = tiny.denormalize(x)
    a = objective(Context(truncated, pixels, x))
    b = objective(Context(dict(full), pixels, x))
    assert torch.allclose(a, b)
    calls = []
    handle = tiny.module.classifier.register_forward_hook(lambda *_: calls.append(1))
    try:
        render_channels(tiny, "features.3", [0, 1], steps=3, size=32)
    finally:
        handle.remove()
    assert calls == []  # nothing after the target layer ran


@pytest.mark.slow
def test_model_parameters_take_no_gradient(tiny):
    render_classes(tiny, [0, 1], steps=2, size=32)
    assert all(p.grad is None and not p.requires_grad for p in tiny.module.parameters())


@pytest.mark.slow
def test_same_seed_same_image(tiny):
    a = render_channels(tiny, "features.3", [2, 5], steps=4, size=32, seed=7)
    b = render_channels(tiny, "features.3", [2, 5], steps=4, size=32, seed=7)
    c = render_channels(tiny, "features.3", [2, 5], steps=4, size=32, seed=8)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    p = render_channels(tiny, "features.3", [2], preset="paper", steps=3, seed=7)
    q = render_channels(tiny, "features.3", [2], preset="paper", steps=3, seed=7)
    assert torch.equal(p.images, q.images)


def _no_step(step, values):  # pragma: no cover - must never run
    raise AssertionError("an optimization step ran before the input was checked")


@pytest.mark.parametrize(
    "objective, message",
    [
        (obj.channel("features.9", 0), "unknown layer 'features.9'"),
        (obj.channel("features.3", 16), "channel 16 is out of range: layer 'features.3' has 16"),
        (obj.class_score(4), "class 4 is out of range"),
        (obj.channel("features.3", [0, 1, 2]), "3 channels given for a batch of 2 rows"),
    ],
)
def test_bad_objective_fails_before_any_step(tiny, objective, message):
    with pytest.raises(ConvsightError, match=message):
        render_settings(tiny, objective, 2, plain(), callback=_no_step)


def test_bad_class_and_settings_fail_clearly(tiny):
    with pytest.raises(ConvsightError, match="unknown class 'zebra'"):
        render_classes(tiny, ["zebra"])
    with pytest.raises(ConvsightError, match="unknown preset"):
        settings_for("fancy")
    with pytest.raises(ConvsightError, match="unknown render setting"):
        settings_for("robust", wings=2)
    with pytest.raises(ConvsightError, match="unknown optimizer"):
        settings_for("robust", optimizer="lbfgs")


@pytest.mark.slow
def test_hooks_are_released_after_an_exception_mid_render(tiny):
    def boom(step, values):
        if step == 2:
            raise RuntimeError("stop")

    before = hook_count(tiny.module)
    with pytest.raises(RuntimeError, match="stop"):
        render_settings(tiny, obj.channel("features.3", [0, 1]), 2, plain(), callback=boom)
    assert hook_count(tiny.module) == before == 0
    with pytest.raises(RuntimeError, match="stop"):
        render_settings(tiny, obj.class_score([0, 1]), 2, plain(channels_last=True), callback=boom)
    assert hook_count(tiny.module) == 0
    with pytest.raises(RuntimeError, match="stop"):  # ghost noise hooks every conv
        render_settings(tiny, obj.class_score([0, 1]), 2, plain(ghost=0.1), callback=boom)
    assert hook_count(tiny.module) == 0
    res = residual_model()
    with pytest.raises(RuntimeError, match="stop"):  # skip gradient hooks every branch
        render_settings(res, obj.class_score([0, 1]), 2, plain(skip_gradient=0.5), callback=boom)
    assert hook_count(res.module) == 0
    weight = tiny.module.features[0].weight
    assert weight.is_contiguous()  # channels_last conversion undone


@pytest.mark.slow
def test_dead_channels_are_reported_and_skipped(tiny):
    conv = tiny.module.features[3]
    with torch.no_grad():
        conv.weight[5] = 0
        conv.bias[5] = -1.0  # ReLU output of channel 5 is 0 for every input
    result = render_settings(
        tiny, obj.channel("features.4", [5, 6]), 2, plain(l1=0.1), seeds=[0, 1]
    )
    assert result.dead == [0]
    start = make_param(tiny, plain(), row_generators([0, 1])).pixels().clamp(0, 1)
    assert torch.allclose(result.images[0], start[0])  # skipped: keeps its start image
    assert not torch.allclose(result.images[1], start[1])


@pytest.mark.parametrize("decay_power", [1.0, 1.5])
def test_fourier_param_starts_from_a_given_image(decay_power):
    pixels = torch.rand(2, 3, 20, 24) * 0.9 + 0.05
    param = FourierImage.from_pixels(pixels, decay_power=decay_power)
    assert torch.allclose(param.pixels(), pixels, atol=1e-4)


@pytest.mark.slow
def test_class_mean_images_from_a_folder_and_mnist(shared, mobilenet_v2):
    samples = shared / "data" / "imagenet-samples"
    means = class_mean_images(samples, mobilenet_v2.card, [1, 951])  # goldfish, lemon
    assert set(means) == {1, 951} and means[1].shape == (3, 224, 224)
    assert 0 <= float(means[1].min()) and float(means[1].max()) <= 1
    with pytest.raises(ConvsightError, match="no images of class"):
        class_mean_images(samples, mobilenet_v2.card, [2])
    from convsight.models import load_model

    mnist = load_model("mnist-cnn")
    digits = class_mean_images("mnist", mnist.card, [0, 7], data_dir=shared / "data")
    assert digits[7].shape == (1, 28, 28) and float(digits[7].mean()) > 0.05


def test_parse_channels():
    assert parse_channels("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ConvsightError, match="cannot read channels"):
        parse_channels("a-b")


@pytest.mark.slow
def test_cli_maximize_writes_grid_pngs_and_summary(shared, tmp_path):
    out = tmp_path / "max"
    weights = shared / "models" / "vgg16_hed_features.pt"
    result = runner.invoke(
        app,
        ["maximize", "vgg16", "--weights", str(weights), "--layer", "features.2"]
        + ["--channels", "0-2", "--steps", "2", "--size", "32", "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary["channels"]] == ["0", "1", "2"]
    assert summary["settings"]["steps"] == 2 and summary["dead_channels"] == []
    assert (out / "grid.png").is_file() and (out / "channel_0002.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "features.99"], "unknown layer 'features.99'"),
        (["--layer", "features.2", "--channels", "60-70"], "channel 70 is out of range"),
        (["--layer", "features.2", "--preset", "fancy"], "unknown preset"),
        (["--layer", "features.2", "--set", "wings=3"], "--set takes KEY=VALUE"),
    ],
)
def test_cli_maximize_bad_input_exit_2_nothing_written(shared, tmp_path, args, message):
    out = tmp_path / "never"
    weights = shared / "models" / "vgg16_hed_features.pt"
    result = runner.invoke(
        app, ["maximize", "vgg16", "--weights", str(weights), "--out", str(out)] + args
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_cli_classviz_mean_init_and_bad_class(shared, tmp_path):
    weights = shared / "models" / "mobilenet_v2_imagenet.pt"
    samples = shared / "data" / "imagenet-samples"
    out = tmp_path / "cv"
    base = ["classviz", "mobilenet_v2", "--weights", str(weights), "--quiet"]
    result = runner.invoke(
        app,
        base
        + ["--classes", "goldfish,951", "--init", "mean", "--dataset", str(samples)]
        + ["--preset", "paper", "--steps", "2", "--size", "64", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["class"] for row in summary["classes"]] == [1, 951]
    assert summary["classes"][0]["mean_of_images"] == 1
    assert (out / "start.png").is_file() and (out / "class_0951_lemon.png").is_file()
    bad = runner.invoke(app, base + ["--classes", "goldfsh", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown class 'goldfsh'" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert OUTPUT == "<output>"


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [["classviz", "--classes", "1"], ["maximize", "--layer", "features.0"]]
)
@pytest.mark.parametrize(
    "setting, message",
    [("bn_prior=1", "needs batch norm layers"), ("skip_gradient=0.5", "needs residual blocks")],
)
def test_cli_model_hook_on_a_model_without_its_layers_exit_2(tmp_path, command, setting, message):
    out = tmp_path / "hooked"
    args = [command[0], "mnist-cnn", *command[1:], "--set", setting, "--out", str(out)]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_class_preset_runs_without_its_skip_gradient_on_a_plain_cnn(tmp_path):
    out = tmp_path / "plain"
    args = ["classviz", "mnist-cnn", "--classes", "7", "--steps", "2", "--out", str(out)]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["skip_gradient"] == 0.3
    assert summary["objective"].endswith("; skip gradient 0.3 off: no residual blocks")


def residual_model() -> Model:
    """A small untrained residual classifier: two MobileNet v2 blocks with skip connections."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        InvertedResidual(8, 8, 1, 2),
        InvertedResidual(8, 8, 1, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    return three_class_16px(net, "res")


@pytest.mark.slow
def test_skip_gradient_scales_only_the_residual_branchs_gradient():
    from torchvision.models import mobilenet_v2, resnet18, resnet50

    from convsight.optvis.model_hooks import SkipGradient, check_model_hooks, residual_branches

    block = residual_model().module[1]
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    g = torch.randn(2, 8, 16, 16)

    def input_grad(gamma):
        with SkipGradient(block, gamma):
            y = block(x)
            (grad,) = torch.autograd.grad(y, x, g)
        return y.detach(), grad

    y1, full = input_grad(1.0)
    y0, skip = input_grad(0.0)  # the skip connection alone passes the gradient unchanged
    y_half, half = input_grad(0.5)
    assert torch.equal(skip, g) and not torch.allclose(full, g)
    assert torch.allclose(half, g + 0.5 * (full - g), atol=1e-6)
    assert torch.equal(y1, y0) and torch.equal(y1, y_half)  # the values are untouched
    assert hook_count(block) == 0
    # which modules count as a residual branch in torchvision's families
    assert len(residual_branches(mobilenet_v2())) == 10  # blocks with a skip connection
    assert len(residual_branches(resnet18())) == 8
    assert len(residual_branches(resnet50())) == 16
    # ResNet adds the skip connection in place onto the hooked module's output
    net = resnet18().eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    (full,) = torch.autograd.grad(net(x)[0, 0], x)
    with SkipGradient(net, 0.5):
        y = net(x)
        (damped,) = torch.autograd.grad(y[0, 0], x)
    assert torch.equal(y.detach(), net(x).detach()) and not torch.allclose(damped, full)
    assert residual_branches(nn.Sequential(nn.Conv2d(3, 3, 1))) == []
    with pytest.raises(ConvsightError, match="needs residual blocks"):
        check_model_hooks(nn.Sequential(nn.Conv2d(3, 3, 1)), skip_gradient=0.5)


@pytest.mark.slow
def test_skip_gradient_render_changes_the_image_per_row_not_the_values():
    model = residual_model()
    settings = dict(steps=4, seed=2, class_objective="margin", skip_gradient=1.0)
    plain_run = render_classes(model, [0, 2], **settings)
    settings["skip_gradient"] = 0.3
    damped = render_classes(model, [0, 2], **settings)
    again = render_classes(model, [0, 2], **settings)
    alone = render_classes(model, [2], **settings)
    assert not torch.allclose(plain_run.images, damped.images)
    assert torch.equal(damped.images, again.images)
    assert torch.allclose(damped.images[1], alone.images[0], atol=1e-5)
    assert hook_count(model.module) == 0
    logits = model.module(model.normalize(damped.images))  # values: the unchanged network's
    assert torch.allclose(damped.values, logits[[0, 1], [0, 2]] - logits.mean(1), atol=1e-4)
    assert damped.description.endswith("; skip gradient 0.3 on 2 residual branches")
    for bad in (0, 1.5):
        with pytest.raises(ConvsightError, match=r"skip-gradient must be in \(0, 1\]"):
            settings_for("robust", skip_gradient=bad)


@pytest.mark.slow
def test_skip_gradient_is_off_on_a_model_without_residual_blocks(tiny):
    result = render_classes(tiny, [1], steps=2, size=32, skip_gradient=0.3)
    assert result.description.endswith("; skip gradient 0.3 off: no residual blocks")
    assert hook_count(tiny.module) == 0


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["features.3", "features.4", "features.2"])
def test_computing_only_the_rows_channel_of_a_conv_gives_the_same_render(tiny, layer):
    # a conv, the ReLU after a conv, and a max-pool after a conv and a ReLU
    from convsight.optvis.forward import Forward

    channels = [1, 4, 7]
    assert Forward(tiny, obj.channel(layer, channels), True).sliced == {layer}
    common = dict(steps=4, size=32, seed=2, views=2, chunk=3)
    sliced = render_channels(tiny, layer, channels, slice_channels=True, **common)
    whole = render_channels(tiny, layer, channels, slice_channels=False, **common)
    assert torch.allclose(sliced.values, whole.values, atol=1e-4)
    assert torch.allclose(sliced.images, whole.images, atol=1e-4)


def test_slicing_through_batch_norm_and_not_past_a_non_channelwise_layer():
    from convsight.optvis.forward import Forward

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 1)
    )
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 2)
    net[1].bias.data.uniform_(-1, 1)
    card = ModelCard(
        name="bn", arch="test:bn", input_size=(16, 16), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    model = Model(net.eval(), card)
    x = torch.rand(3, 3, 16, 16)
    for layer in ("1", "2"):
        objective = obj.channel(layer, [0, 5, 2])
        forward = Forward(model, objective, True)
        assert forward.sliced == {layer}
        sliced = forward(model.normalize(x))[layer]
        whole = Forward(model, objective, False)(model.normalize(x))[layer]
        expected = whole[torch.arange(3), torch.tensor([0, 5, 2])][:, None]
        torch.testing.assert_close(sliced, expected, rtol=1e-5, atol=1e-5)
    # the walk back stops at the nearest conv; a grouped conv is not sliced at all
    assert Forward(model, obj.channel("3", [0, 1, 2]), True).sliced == {"3"}
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.ReLU())
    assert not Forward(Model(grouped.eval(), card), obj.channel("1", [0]), True).sliced


@pytest.mark.slow
def test_render_takes_built_objects_and_a_recipe_builds_them(tiny):
    from convsight.optvis.callbacks import Callback
    from convsight.optvis.transforms import Jitter

    settings = settings_for("robust", steps=3, size=32, average=0.5, coarse_to_fine=0.5)
    objective = obj.channel("features.4", [1, 4])
    from_settings = render_settings(tiny, objective, 2, settings, seeds=[3, 4])
    by_hand = render(tiny, **build(tiny, objective, 2, settings, seeds=[3, 4]).parts())
    assert torch.equal(by_hand.images, from_settings.images)
    assert torch.equal(by_hand.trace, from_settings.trace)
    # a preset is a function returning the built objects
    paper_recipe = paper(tiny, objective, 2, steps=2, size=32, seeds=[0, 1])
    paper_settings = settings_for("paper", steps=2, size=32)
    assert torch.equal(
        render(tiny, **paper_recipe.parts()).images,
        render_settings(tiny, objective, 2, paper_settings, seeds=[0, 1]).images,
    )

    # swap an object instead of adding an option: own parameterization, transforms,
    # optimizer and step callback
    seen = []

    class Steps(Callback):
        def end_step(self, state):
            seen.append(state.step)

    generators = row_generators([0, 1])
    param = FourierImage.normal(tiny, generators, (32, 32))
    optimizer = torch.optim.Adam(param.params, lr=0.05)
    result = render(
        tiny, objective, param, [Jitter(4)], optimizer, 3, [Steps()], generators=generators
    )
    assert seen == [0, 1, 2] and result.images.shape == (2, 3, 32, 32)
    assert result.description == "channel(features.4, [1, 4])" and hook_count(tiny.module) == 0


@pytest.mark.slow
def test_a_snapshot_is_the_image_a_shorter_render_ends_with(tiny):
    common = dict(preset="paper", size=32, seed=1)
    longer = render_classes(tiny, [0, 2], steps=5, snapshots=(2, 3), **common)
    assert sorted(longer.snapshots) == [2, 3]
    for steps in (2, 3):
        shorter = render_classes(tiny, [0, 2], steps=steps, **common)
        assert torch.equal(longer.snapshots[steps], shorter.images)


class _ViewAfterConv(nn.Module):
    """A tutorial CNN: conv, then x.view(...) into a linear head (breaks in channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.head(x.view(x.size(0), -1))


@pytest.mark.slow
def test_a_model_that_views_after_a_conv_renders_contiguous_and_says_so():
    torch.manual_seed(0)
    card = ModelCard("view", "test:view", (16, 16), 3, (0.5,) * 3, (0.25,) * 3, ["a", "b", "c"])
    model = Model(_ViewAfterConv(), card)
    result = render_classes(model, [0, 2], steps=3, size=16, seed=0)
    assert torch.isfinite(result.images).all()
    assert "contiguous memory format" in result.description
    channels = render_channels(model, "conv", [1], steps=3, size=16, pad=2, seed=0)
    assert torch.isfinite(channels.images).all()
