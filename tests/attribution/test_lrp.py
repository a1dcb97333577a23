"""LRP through zennit: zennit's own maps, conservation, refusals, the model left as it was."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from convsight.attribution import LRP, get_method
from convsight.attribution.lrp import unmerged_batch_norms
from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard
from convsight.targets import resolve_targets
from tests.conftest import hook_count


def _card(size: int, classes: int = 4) -> ModelCard:
    labels = [f"class{i}" for i in range(classes)]
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}
    return ModelCard("lrp-test", "test:lrp", (size, size), 3, labels=labels, **stats)


def vgg_style(bias: bool = True) -> nn.Module:
    """Conv-ReLU-pool blocks, then a two-layer head: the layer types of VGG."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1, bias=bias),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16, bias=bias),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 4, bias=bias),
    )


def bn_net() -> nn.Module:
    """Conv-BN-ReLU blocks (batch norm statistics that matter)."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def _model(net: nn.Module, size: int = 16) -> Model:
    return Model(net, _card(size))


def _pixels(size: int = 16, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _zennit_map(model: Model, pixels: torch.Tensor, targets: list[int], composite) -> torch.Tensor:
    """zennit's own attributor: the normalized input, relevance starting at logit x one-hot."""
    onehot = torch.eye(4)[targets]
    with Gradient(model.module, composite) as attributor:
        _, relevance = attributor(model.normalize(pixels), lambda out: out * onehot)
    return relevance


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max() / scale)


def _box(model: Model) -> EpsilonGammaBox:
    corner = torch.zeros(1, 3, 1, 1)
    return EpsilonGammaBox(low=model.normalize(corner), high=model.normalize(corner + 1))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_vgg_style_maps_equal_zennits_attributor(composite):
    torch.manual_seed(0)
    model, x = _model(vgg_style()), _pixels()
    ours = LRP(model).attribute(x, [1, "class3"], composite=composite)
    theirs = EpsilonPlusFlat() if composite == "epsilon_plus_flat" else _box(model)
    _assert_close(ours, _zennit_map(model, x, [1, 3], theirs))
    assert hook_count(model.module) == 0


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_batch_norm_net_maps_equal_zennits_with_the_canonizer(composite):
    torch.manual_seed(0)
    model, x = _model(bn_net()), _pixels()
    before = _state(model.module)
    method = LRP(model)
    ours = method.attribute(x, [0, 2], composite=composite)
    assert method.last_run["canonizer"] == "SequentialMergeBatchNorm"
    assert method.last_run["unmerged_batch_norms"] == []
    kwargs = {"canonizers": [SequentialMergeBatchNorm()]}
    theirs = (
        EpsilonPlusFlat(**kwargs)
        if composite == "epsilon_plus_flat"
        else EpsilonGammaBox(
            low=model.normalize(torch.zeros(1, 3, 1, 1)),
            high=model.normalize(torch.ones(1, 3, 1, 1)),
            **kwargs,
        )
    )
    expected = _zennit_map(model, x, [0, 2], theirs)
    _assert_close(ours, expected)
    # the merge was undone: every parameter and statistic as before, and the canonizer mattered
    after = _state(model.module)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert model.module[4].bias is None
    plain = method.attribute(x, [0, 2], composite=composite, canonize=False)
    assert method.last_run["canonizer"] is None
    assert float((plain - ours).abs().max()) > 1e-3 * float(ours.abs().max())


@pytest.mark.slow
def test_torchvision_resnet_gets_zennits_resnet_canonizer():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model, x = _model(resnet18(num_classes=4), 32), _pixels(32, n=1)
    forwards = {name: type(m).forward for name, m in model.module.named_modules()}
    method = LRP(model)
    ours = method.attribute(x, 2)
    assert method.last_run["canonizer"] == "ResNetCanonizer"
    _assert_close(ours, _zennit_map(model, x, [2], EpsilonPlusFlat(canonizers=[ResNetCanonizer()])))
    assert hook_count(model.module) == 0
    assert all("forward" not in vars(m) for m in model.module.modules())  # forwards restored
    assert {name: type(m).forward for name, m in model.module.named_modules()} == forwards


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_relevance_is_conserved_on_a_bias_free_relu_net(composite):
    torch.manual_seed(0)
    net = vgg_style(bias=False)
    for parameter in net.parameters():  # logits near 1, far above zennit's stabilizer (1e-6)
        parameter.data *= 3
    model, x = _model(net), _pixels(n=3)
    targets = [0, 1, 3]
    relevance = LRP(model).attribute(x, targets, composite=composite)
    logits = model.module(model.normalize(x)).detach()
    scores = logits[torch.arange(3), targets]
    sums = relevance.sum((1, 2, 3))
    assert torch.allclose(sums, scores, rtol=1e-4, atol=1e-6), (sums, scores)
    # a margin starts from the class's logit and minus the best other's: it sums to the margin
    from convsight.targets import MarginTarget

    margin = LRP(model).attribute(x[:1], MarginTarget(0)).sum()
    other = logits[0, 1:].max()
    scale = float(logits[0, 0].abs() + other.abs())  # the two relevances that cancel
    assert abs(float(margin - (logits[0, 0] - other))) <= 1e-4 * scale


class Squash(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())


@pytest.mark.parametrize(
    ("layer", "kind"),
    [(nn.LayerNorm([8, 16, 16]), "LayerNorm"), (Squash(), "Squash"), (nn.Upsample(16), "Upsample")],
)
def test_a_layer_without_a_rule_is_refused_in_one_sentence_before_any_work(layer, kind):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), layer, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 256, 4)
    )
    model = _model(net)
    calls: list[int] = []
    handle = net.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ConvsightError) as error:
            get_method("lrp", model).attribute(_pixels(), 0)
    finally:
        handle.remove()
    message = str(error.value)
    assert f"no rule for layer '1' ({kind}) of model 'lrp-test'" in message
    assert "\n" not in message and message.count(". ") == 0
    assert calls == []  # no forward pass ran
    assert hook_count(net) == 0


def test_batch_norm_after_a_relu_is_reported_unmerged():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    net.append(nn.BatchNorm2d(4))
    assert unmerged_batch_norms(net) == ["2"]


def test_a_missing_zennit_names_the_extra(monkeypatch):
    model = _model(vgg_style())
    for name in [m for m in sys.modules if m == "zennit" or m.startswith("zennit.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ConvsightError, match=r"LRP needs the lrp extra: pip install 'convsight\[lrp\]'"
    ):
        LRP(model).attribute(_pixels(), 0)


def test_an_unknown_composite_is_refused_before_any_work():
    model = _model(vgg_style())
    with pytest.raises(ConvsightError, match="epsilon_plus_flat, epsilon_gamma_box"):
        LRP(model).attribute(_pixels(), 0, composite="epsilon")


def _mobilenet(size: int = 96) -> Model:
    """A torchvision MobileNetV2 (random weights, batch norm statistics that matter)."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=4, width_mult=0.5).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.2)
    return _model(net, size)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_torchvision_mobilenet_v2_maps_equal_zennits_with_its_canonizer(composite):
    from convsight.attribution.lrp_canonizers import MobileNetV2Canonizer

    model, x = _mobilenet(), _pixels(96, n=1)
    state = _state(model.module)
    forwards = {name: type(m).forward for name, m in model.module.named_modules()}
    method = LRP(model)
    ours = method.attribute(x, 2, composite=composite)
    assert method.last_run["canonizer"] == "MobileNetV2Canonizer"
    assert method.last_run["sums_outside_rules"] == 0  # every residual sum through a Sum module
    zennit_composite = _box(model) if composite == "epsilon_gamma_box" else EpsilonPlusFlat()
    zennit_composite.canonizers = [MobileNetV2Canonizer()]
    _assert_close(ours, _zennit_map(model, x, [2], zennit_composite))
    # the model as it was: no hook, no forward or module left by the canonizer, same weights
    assert hook_count(model.module) == 0
    assert all("forward" not in vars(m) for m in model.module.modules())
    assert {name: type(m).forward for name, m in model.module.named_modules()} == forwards
    assert not any("canonizer" in name for name, _ in model.module.named_modules())
    assert all(torch.equal(v, state[k]) for k, v in model.module.state_dict().items())


def test_mobilenet_v2_residual_sums_conserve_relevance():
    from convsight.attribution.lrp import lrp_context, output_relevance

    model, x = _mobilenet(), _pixels(96, n=1)
    seen: dict[str, torch.Tensor] = {}
    with lrp_context(model, "epsilon_plus_flat"), torch.enable_grad():
        blocks = [m for m in model.module.modules() if hasattr(m, "canonizer_sum")]
        residual = [m for m in model.module.modules() if getattr(m, "use_res_connect", False)]
        assert blocks == residual and len(blocks) == 10  # MobileNetV2's residual blocks
        block = blocks[-1]

        # before zennit's own hooks: the stack as it enters the rule, the sum as it leaves
        sum_module = block.canonizer_sum
        handles = [
            sum_module.register_forward_pre_hook(
                lambda _m, inputs: seen.update(stack=inputs[0]), prepend=True
            ),
            sum_module.register_forward_hook(
                lambda _m, _i, output: seen.update(sum=output), prepend=True
            ),
        ]
        try:
            output = model.module(model.normalize(x).requires_grad_(True))
        finally:
            for handle in handles:
                handle.remove()
        stack, total = seen["stack"], seen["sum"]
        below, above = torch.autograd.grad(
            output, [stack, total], output_relevance(output, resolve_targets(model, 1, 1))
        )
    # the relevance into the two summands adds up to that of the sum, each in proportion to
    # its contribution (a plain x + y would give each summand all of it: twice the total)
    assert abs(float(below.sum() - above.sum())) <= 1e-4 * float(above.abs().sum())
    share = stack[..., 0] / (stack.sum(-1))
    mask = stack.sum(-1).abs() > 1e-3
    assert torch.allclose(below[..., 0][mask], (above * share)[mask], rtol=1e-3, atol=1e-6)


class Pooled(nn.Module):
    """Pools in its forward (as torchvision's DenseNet does), with a residual sum in code."""

    def __init__(self, pool: str = "adaptive") -> None:
        super().__init__()
        self.conv, self.head, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), pool
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x + torch.relu(x)  # a residual sum and an activation in code: allowed
        if self.pool == "adaptive":
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        elif self.pool == "mean":
            x = x.mean((2, 3), keepdim=True)
        elif self.pool == "max":  # no rule for max pooling, module or not: passed as its gradient
            x = nn.functional.adaptive_max_pool2d(x, 1)
        else:
            x = self.avg(x)  # pooling by a module: covered by its rule
        return self.head(torch.flatten(x, 1))


@pytest.mark.parametrize(("pool", "op"), [("adaptive", "adaptive_avg_pool2d"), ("mean", "mean")])
def test_pooling_in_the_models_own_code_is_refused_in_one_sentence(pool, op):
    net = Pooled(pool)
    model = _model(net)
    for canonize in (True, False):
        with pytest.raises(ConvsightError) as error:
            LRP(model).attribute(_pixels(), 0, canonize=canonize)
        message = str(error.value)
        assert message.startswith(
            f"model 'lrp-test' pools in its own code ({op} in Pooled.forward)"
        )
        assert "\n" not in message and message.count(". ") == 0
        assert hook_count(net) == 0


@pytest.mark.parametrize("pool", ["module", "max"])
def test_a_residual_sum_or_max_pooling_in_code_is_allowed_and_counted(pool):
    net = Pooled(pool)
    method = LRP(_model(net))
    relevance = method.attribute(_pixels(), [0, 1])
    assert torch.isfinite(relevance).all()
    assert method.last_run["sums_outside_rules"] == 1
    assert method.last_run["canonizer"] is None
    assert hook_count(net) == 0
