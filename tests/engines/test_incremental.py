"""Incremental inference for occlusion: the same numbers as the whole network, less work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convsight.attribution import Occlusion
from convsight.engines import incremental_net
from convsight.engines.incremental import IncrementalNet, Patch, materialize
from convsight.models import Model
from tests.engines import small_card


class Branchy(nn.Module):
    """Dilation, a padded max-pool, functional ReLU, a scalar product and two branches with
    different receptive fields added together."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.small = nn.Conv2d(8, 8, 3, padding=1)
        self.large = nn.Conv2d(8, 8, 5, padding=2)
        self.skip = nn.Conv2d(8, 8, 1, stride=2)  # stride larger than the kernel
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.pool(torch.sigmoid(self.dilated(x)) * 0.5)
        x = torch.add(self.small(x), F.relu(self.large(x)))
        x = self.skip(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Moody(nn.Module):
    """Python control flow on a tensor: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.mean() > 10:
            x = -x
        return self.head(x.mean((2, 3)))


def _networks() -> dict[str, nn.Module]:
    from torchvision.models import mobilenet_v2, resnet18

    torch.manual_seed(0)
    nets = {
        "branchy": Branchy(),
        "resnet18": resnet18(num_classes=4),
        "mobilenet_v2": mobilenet_v2(width_mult=0.25, num_classes=4),
    }
    for net in nets.values():  # non-trivial batch-norm statistics, so folding them matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return {k: v.eval() for k, v in nets.items()}


def _model(net: nn.Module, size: int) -> Model:
    return Model(net, small_card(size))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["branchy", "resnet18", "mobilenet_v2"])
def test_patches_give_the_whole_network_output_and_skip_work(name):
    module = _networks()[name]
    net = IncrementalNet(module)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 64, 64, generator=g)
    # boxes at the corners, on the edges and inside
    top = torch.tensor([0, 0, 56, 56, 20, 3, 31])
    left = torch.tensor([0, 56, 0, 56, 33, 29, 0])
    patch = Patch(x, torch.randn(7, 3, 8, 8, generator=g), top, left)
    with torch.inference_mode():
        clean = net.clean_values(x)
        expected = module(materialize(patch))
        values, dense = net._interpret(clean, patch, skip=set())
        first = net._output(values)  # interpreted (and the tail frozen for the next call)
        second = net.forward(clean, patch)
        again = net.forward(clean, patch)
    # the later calls ran the frozen tail: had it not been built, they would interpret the
    # graph again, as the first call did, and match trivially
    tail = net._tails[(tuple(patch.values.shape[1:]), tuple(x.shape))]
    assert tail is not None and set(dense) == tail[0]
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, second)
    torch.testing.assert_close(net.clean_output(clean), module(x).detach(), rtol=1e-4, atol=1e-4)
    # the first convolution ran on the boxes only, the head on whole maps
    first_conv = next(n for n in net.graph_module.graph.nodes if n.op == "call_module")
    assert isinstance(values[first_conv], Patch) and first_conv not in dense
    assert values[first_conv].values.shape[-1] < 64
    assert dense, "the head cannot run on boxes"


@pytest.mark.slow
def test_the_original_network_is_left_alone():
    module = _networks()["resnet18"]
    state = {k: v.clone() for k, v in module.state_dict().items()}
    IncrementalNet(module)
    assert module.relu.inplace is True  # the copy's in-place flags were switched off, not these
    assert isinstance(module.bn1, nn.BatchNorm2d)  # batch norm folded in the copy only
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["branchy", "mobilenet_v2"])
def test_incremental_occlusion_equals_the_whole_network(name):
    model = _model(_networks()[name], 40)
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    options = dict(window=10, stride=7, batch_size=5)  # the last windows hang over the edges
    assert incremental_net(model)[0] is not None
    method = Occlusion(model)
    fast = method.attribute(x, [1, 3], engine="incremental", **options)
    assert method.last_run["engine"] == "incremental" and method.last_run["fallback"] is None
    slow = Occlusion(model).attribute(x, [1, 3], engine="eager", **options)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    # the default is incremental inference too, not the module it falls back to
    method = Occlusion(model)
    default = method.attribute(x, [1, 3], **options)
    assert (method.last_run["requested_engine"], method.engine_used) == ("incremental",) * 2
    assert method.last_run["fallback"] is None
    torch.testing.assert_close(default, fast)


def test_untraceable_network_falls_back_to_the_whole_network():
    torch.manual_seed(0)
    model = _model(Moody().eval(), 24)
    x = torch.rand(1, 3, 24, 24)
    net, reason = incremental_net(model)
    assert net is None and reason.startswith("torch.fx cannot trace the network (TraceError")
    method = Occlusion(model)
    fast = method.attribute(x, 2, window=6, stride=6)
    assert method.last_run["requested_engine"] == "incremental"
    assert (method.engine_used, method.last_run["fallback"]) == ("eager", reason)
    slow = Occlusion(model).attribute(x, 2, window=6, stride=6, engine="eager")
    torch.testing.assert_close(fast, slow)
