"""Channel relevance for one decision: hand-computed shares, conservation, conditional heatmaps
that add up, targets, errors, and the model left as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from convsight.analysis.channel_relevance import channel_relevance, conditional_heatmaps
from convsight.attribution import LRP
from convsight.attribution.lrp import lrp_context
from convsight.errors import ConvsightError, UnknownLayerError
from convsight.models import Model, ModelCard
from tests.conftest import hook_count, two_channel_net


@contextmanager
def own_features(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, the output of ``net.features`` of each forward pass."""
    seen: list[torch.Tensor] = []
    handle = net.features.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        yield seen
    finally:
        handle.remove()


def _card(size: tuple[int, int], channels: int = 3, labels=("yes", "no", "maybe", "never")):
    return ModelCard(
        name="channels-test",
        arch="test:channels",
        input_size=size,
        channels=channels,
        mean=(0.0,) * channels if channels == 1 else (0.5, 0.4, 0.3),
        std=(1.0,) * channels if channels == 1 else (0.25, 0.2, 0.3),
        labels=list(labels),
    )


def two_layer() -> Model:
    """1 x 1 x 2 image -> 1x1 conv to 2 channels (weights 2 and 1) -> ReLU -> linear."""
    return Model(two_channel_net((2.0, 1.0)), _card((1, 2), channels=1, labels=("yes", "no")))


def test_hand_computed_channel_shares_for_gradient_x_activation():
    model = two_layer()
    image = torch.tensor([0.5, 0.25]).view(1, 1, 2)
    result = channel_relevance(model, image, "yes", ["1"])
    # activations: channel 0 = [1.0, 0.5], channel 1 = [0.5, 0.25]; score = 1 + 1.5 - 2 + 0.5
    # channel 0: 1 x 1.0 + 3 x 0.5 = 2.5; channel 1: -4 x 0.5 + 2 x 0.25 = -1.5
    layer = result.layers["1"]
    assert result.score == pytest.approx(1.0)
    assert layer.relevance.tolist() == pytest.approx([2.5, -1.5])
    assert layer.share.tolist() == pytest.approx([0.625, -0.375])  # over |2.5| + |-1.5|
    assert layer.total == pytest.approx(1.0) and layer.top(1) == [0]
    assert layer.maps.flatten().tolist() == pytest.approx([1.0, 1.5, -2.0, 0.5])
    # input x gradient: pixel 0 feeds c0 (2 x 1) and c1 (1 x -4), pixel 1 c0 (2 x 3) and c1 (1 x 2)
    assert result.heatmap.flatten().tolist() == pytest.approx([0.5 * -2.0, 0.25 * 8.0])
    assert result.classes == [0] and result.target == "yes" and result.method == "grad_x_act"
    json = result.to_json()
    assert json["layers"]["1"]["share"] == pytest.approx([0.625, -0.375])
    # the conditional heatmaps: what flows through each channel alone
    maps = conditional_heatmaps(model, image, "1", [0, 1], "yes", method="grad_x_act")
    assert maps.shape == (2, 1, 2)
    # channel 0's share of each pixel: 0.5 x (2 x 1), 0.25 x (2 x 3); channel 1's: the rest
    assert maps.flatten().tolist() == pytest.approx([1.0, 1.5, -2.0, 0.5])


def vgg_style(bias: bool = True, batch_norm: bool = False) -> nn.Module:
    def norm(n: int) -> nn.Module:
        return nn.BatchNorm2d(n) if batch_norm else nn.Identity()

    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias),
        norm(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias),
        norm(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4, bias=bias),
    )
    for parameter in net.parameters():  # logits near 1, far above zennit's stabilizer
        parameter.data *= 3
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _model(**kwargs) -> Model:
    torch.manual_seed(0)
    return Model(vgg_style(**kwargs), _card((16, 16)))


def _image() -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))


LAYERS = ["0", "2", "4", "7"]  # a conv (an in-place ReLU follows), a ReLU, a conv, a pool


@pytest.mark.parametrize("method", ["grad_x_act", "crp"])
def test_a_bias_free_relu_net_conserves_the_score_at_every_layer(method):
    model = _model(bias=False)
    result = channel_relevance(model, _image(), 2, LAYERS, method=method)
    logits = model.module(model.normalize(_image()[None])).detach()
    assert result.score == pytest.approx(float(logits[0, 2]))
    for name, layer in result.layers.items():
        assert layer.relevance.shape == (6 if name in ("0", "2") else 8,)
        assert layer.total == pytest.approx(float(layer.maps.sum()), rel=1e-5)
        assert layer.total == pytest.approx(result.score, rel=1e-4), name
        assert float(layer.share.abs().sum()) == pytest.approx(1.0)
    assert float(result.heatmap.sum()) == pytest.approx(result.score, rel=1e-4)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("grad_x_act", {}),
        ("crp", {}),
        ("crp", {"batch_norm": True}),
        ("grad_x_act", {"batch_norm": True}),
    ],
)
def test_conditional_heatmaps_of_all_channels_sum_to_the_full_heatmap(method, kwargs):
    model = _model(**kwargs)  # with biases: the sums hold all the same
    image = _image()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    full = channel_relevance(model, image, "no", ["0", "4"], method=method)
    assert full.canonizer == ("SequentialMergeBatchNorm" if method == "crp" and kwargs else None)
    scale = float(full.heatmap.abs().max())
    for layer, count in (("0", 6), ("4", 8)):
        maps = conditional_heatmaps(model, image, layer, range(count), "no", method, batch_size=3)
        assert maps.shape == (count, 16, 16)
        assert float((maps.sum(0) - full.heatmap).abs().max()) <= 1e-4 * scale, layer
        # one channel alone is not the whole map: the mask did act
        assert float((maps[0] - full.heatmap).abs().max()) > 1e-3 * scale
    assert hook_count(model.module) == 0
    after = model.module.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_crp_below_a_bias_free_layer_conserves_each_channel_and_matches_lrp():
    model = _model(bias=False)
    image = _image()
    result = channel_relevance(model, image, 1, ["4"], method="crp")
    maps = conditional_heatmaps(model, image, "4", range(8), 1, method="crp")
    relevance = result.layers["4"].relevance
    assert torch.allclose(
        maps.sum((1, 2)), relevance, rtol=1e-4, atol=1e-5 * float(relevance.abs().max())
    )
    lrp = LRP(model).attribute(image[None], 1).sum(1)[0]
    assert torch.allclose(result.heatmap, lrp, rtol=1e-4, atol=1e-6)


def test_a_layer_followed_by_an_in_place_relu_is_read_as_its_own_output():
    model = _model()
    inplace = channel_relevance(model, _image(), 0, ["0"]).layers["0"].maps
    model.module[2].inplace = False
    plain = channel_relevance(model, _image(), 0, ["0"]).layers["0"].maps
    assert (inplace < 0).any()  # the conv's own output, negative values included
    assert torch.allclose(inplace, plain)


def test_targets_default_to_the_prediction_and_take_names():
    model = _model()
    predicted = int(model.module(model.normalize(_image()[None])).argmax())
    default = channel_relevance(model, _image(), None, ["4"])
    assert default.classes == [predicted]
    named = channel_relevance(model, _image()[None], model.card.labels[predicted], ["4"])
    assert torch.equal(named.layers["4"].maps, default.layers["4"].maps)


def test_bad_input_is_refused_and_no_hook_is_left():
    model = _model()
    image = _image()
    with pytest.raises(ConvsightError, match="unknown channel method 'lrp'"):
        channel_relevance(model, image, 0, ["4"], method="lrp")
    with pytest.raises(UnknownLayerError, match="nearest"):
        channel_relevance(model, image, 0, ["44"])
    with pytest.raises(ConvsightError, match="one decision is one image"):
        channel_relevance(model, torch.rand(2, 3, 16, 16), 0, ["4"])
    with pytest.raises(ConvsightError, match="at least one layer"):
        channel_relevance(model, image, 0, [])
    with pytest.raises(ConvsightError, match="layer '4' has 8 channels \\(0-7\\); no channel 8"):
        conditional_heatmaps(model, image, "4", [1, 8], 0)
    assert hook_count(model.module) == 0
    odd = Model(nn.Sequential(model.module, nn.Softmax(1)), model.card)
    channel_relevance(odd, image, 0, ["0.4"])  # gradient x activation takes any layer
    with pytest.raises(ConvsightError, match=r"no rule for layer '1' \(Softmax\)"):
        channel_relevance(odd, image, 0, ["0.4"], method="crp")
    assert hook_count(odd.module) == 0


def _calibrating(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=1.0)


def test_crp_at_mobilenet_v2_features_follows_the_activation_within_each_channel():
    """torchvision's MobileNetV2 pools in its own code; with its canonizer the pooling is a
    module with a rule, so a channel's relevance is spread in proportion to where it fired
    (R / a constant over space), not evenly as the plain gradient of the pooling would."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=4, width_mult=0.5, norm_layer=_calibrating)
    model = Model(net, _card((96, 96)))
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # batch norm statistics of real inputs: activations of order one
        net.train()(model.normalize(torch.rand(8, 3, 96, 96)))
    net.eval()
    result = channel_relevance(model, image, 1, ["features"], method="crp")
    assert result.canonizer == "MobileNetV2Canonizer"
    assert result.to_json()["sums_outside_rules"] == 0
    maps = result.layers["features"].maps  # C x 3 x 3
    with own_features(net) as seen, lrp_context(model, "epsilon_plus_flat"):  # batch norm merged
        net(model.normalize(image[None]))
    activation = seen[0][0]
    fired = activation > 1e-3 * activation.amax((1, 2), keepdim=True)
    ratio = torch.where(fired, maps / activation.clamp_min(1e-12), torch.nan)
    spread = ratio.nan_to_num(-torch.inf).amax((1, 2)) - ratio.nan_to_num(torch.inf).amin((1, 2))
    many = fired.flatten(1).sum(1) > 1  # channels that fired at two places or more
    assert many.sum() > 10
    scale = ratio.abs().nan_to_num(0).amax((1, 2))
    assert (spread[many] <= 1e-3 * scale[many]).all()
    assert float(maps[activation == 0].abs().max()) == 0.0  # nothing where a channel was off
    assert hook_count(net) == 0


def test_crp_refuses_pooling_in_code_before_any_work():
    from tests.attribution.test_lrp import Pooled

    net = Pooled("adaptive")
    model = Model(net, _card((16, 16)))
    with pytest.raises(ConvsightError, match=r"pools in its own code \(adaptive_avg_pool2d in"):
        channel_relevance(model, torch.rand(3, 16, 16), 0, ["conv"], method="crp")
    assert hook_count(net) == 0
    found = channel_relevance(model, torch.rand(3, 16, 16), 0, ["conv"])  # gradient x activation
    assert found.to_json().get("sums_outside_rules") is None
