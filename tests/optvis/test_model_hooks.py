"""Model hooks: the skip gradient finds residual additions in the code of any block, not by
class; a render enters any sequence of hooks and releases them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from convsight.errors import ConvsightError
from convsight.optvis import build, render, settings_for
from convsight.optvis.model_hooks import (
    BatchNormPrior,
    GhostNoise,
    ModelHook,
    ResidualAddition,
    SkipGradient,
    check_model_hooks,
    entered,
    residual_additions,
    residual_branches,
)
from convsight.optvis.objectives import class_score
from convsight.optvis.recipes import make_hooks
from convsight.optvis.transforms import RowRandom
from tests.conftest import hook_count

pytestmark = pytest.mark.slow


def _timm(name: str) -> nn.Module:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=3).eval()
    with torch.no_grad():  # branches that matter: timm starts them at (almost) zero
        for parameter_name, parameter in net.named_parameters():
            if parameter_name.endswith("gamma"):  # ConvNeXt's layer scale
                parameter.fill_(1.0)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # ResNet's last batch norm of a block
                m.weight.uniform_(0.5, 1.5)
    return net


def _gradients(block: nn.Module, x: torch.Tensor, g: torch.Tensor, gamma: float):
    with SkipGradient(block, gamma) as hook:
        x = x.clone().requires_grad_(True)
        y = block(x)
        (grad,) = torch.autograd.grad(y, x, g)
    return y.detach(), grad, hook.branches


@pytest.mark.parametrize(
    "name,count,first",
    [
        ("resnet18", 8, ResidualAddition("layer1.0", "layer1.0.bn2")),
        ("convnext_atto", 12, ResidualAddition("stages.0.blocks.0", "stages.0.blocks.0.drop_path")),
        ("efficientnet_b0", 9, ResidualAddition("blocks.1.1", "blocks.1.1.drop_path")),
    ],
)
def test_timm_residual_blocks_are_found_and_damped(name, count, first):
    net = _timm(name)
    found = residual_additions(net)
    assert len(found) == count and found[0] == first
    assert len(residual_branches(net)) == count
    check_model_hooks(net, skip_gradient=0.5)  # no error: there are residual blocks
    with SkipGradient(net, 0.5) as skip:
        assert skip.describe() == f"skip gradient 0.5 on {count} residual branches"
        assert skip.branch_names == [a.branch for a in found]
    # one block: the gradient is the skip path's plus gamma times the branch's
    block = net.get_submodule(first.block)
    channels = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    g = torch.randn_like(block(x))
    y1, full, branches = _gradients(block, x, g, 1.0)
    y0, skip_only, _ = _gradients(block, x, g, 0.0)
    y_half, half, damped = _gradients(block, x, g, 0.5)
    assert (branches, damped) == (0, 1)  # hooks only when switched on
    assert not torch.allclose(full, skip_only, atol=1e-4)
    torch.testing.assert_close(half, skip_only + 0.5 * (full - skip_only), rtol=1e-4, atol=1e-5)
    assert torch.equal(y1, y0) and torch.equal(y1, y_half)  # values untouched
    assert hook_count(net) == 0


def test_torchvision_families_keep_their_counts_and_branches():
    from torchvision.models import mobilenet_v2, resnet18, resnet50

    counts = {f.__name__: len(residual_additions(f())) for f in (mobilenet_v2, resnet18, resnet50)}
    assert counts == {"mobilenet_v2": 10, "resnet18": 8, "resnet50": 16}
    # the same modules as the class-based rule hooked: BasicBlock's bn2, Bottleneck's bn3, conv
    assert [a.branch for a in residual_additions(resnet50())][:2] == [
        "layer1.0.bn3",
        "layer1.1.bn3",
    ]
    assert residual_additions(mobilenet_v2())[0] == ResidualAddition(
        "features.3", "features.3.conv"
    )


class Inline(nn.Module):
    """Residuals written in the network's own forward: with a projection shortcut, through a
    layer scale, and an addition of two parallel convs that is no skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.down_body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.down_tail = nn.Conv2d(16, 16, 1)
        self.project = nn.Conv2d(8, 16, 1, stride=2)
        self.left, self.right = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.body(x) * self.scale  # layer scale after the branch's last module
        x = torch.add(self.project(x), self.down_tail(self.down_body(x)))
        x = self.left(x) + self.right(x)  # parallel paths, equally deep: not residual
        return self.head(x.mean((2, 3)))


def test_inline_residuals_are_found_and_parallel_paths_are_not():
    net = Inline().eval()
    assert residual_additions(net) == [
        ResidualAddition("", "body"),
        ResidualAddition("", "down_tail"),
    ]
    x = torch.randn(1, 3, 16, 16)
    out = net(x)
    with SkipGradient(net, 0.3):
        torch.testing.assert_close(net(x), out)
    assert hook_count(net) == 0
    assert residual_additions(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())) == []


class Offset(ModelHook):
    """A per-pass hook: one forward hook while entered, counts passes, adds 1 to the
    objective of each pass."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.passes = 0

    def register(self) -> Iterator[RemovableHandle]:
        yield self.module.register_forward_hook(lambda *_: None)

    @contextlib.contextmanager
    def around_pass(self, rng: RowRandom) -> Iterator[None]:
        assert len(self.handles) == 1 and isinstance(rng, RowRandom)
        self.passes += 1
        yield

    def adjust(self, total: torch.Tensor, views: int) -> torch.Tensor:
        return total + 1.0

    def describe(self) -> str:
        return "offset by 1"


def test_render_enters_hooks_of_any_kind_and_releases_them(tiny):
    events = []

    @contextlib.contextmanager
    def watched() -> Iterator[None]:
        events.append(("enter", hook_count(tiny.module)))
        try:
            yield
        finally:
            events.append(("exit", hook_count(tiny.module)))

    settings = settings_for("paper", param="pixel", steps=3)

    def recipe() -> dict:
        return build(tiny, class_score([0, 1]), 2, settings).parts()

    plain = render(tiny, **recipe())
    offset = Offset(tiny.module)
    result = render(tiny, **{**recipe(), "hooks": [offset, watched()]})
    assert events == [("enter", 1), ("exit", 1)]  # entered in order, exited in reverse
    assert offset.passes == 3 and hook_count(tiny.module) == 0
    assert torch.equal(result.images, plain.images)  # a constant moves no gradient
    assert torch.equal(result.trace, plain.trace + 1.0)
    assert result.description == f"{plain.description}; offset by 1"


def test_hooks_made_before_one_that_fails_are_released(tiny):
    class Broken(ModelHook):
        def register(self) -> Iterator[RemovableHandle]:
            yield self.module.register_forward_pre_hook(lambda *_: None)
            raise ConvsightError("this model lacks what the hook needs")

    with pytest.raises(ConvsightError, match="lacks what"):
        with entered([GhostNoise(tiny.module, 0.1), Broken(tiny.module)]):
            raise AssertionError("not reached")
    assert hook_count(tiny.module) == 0


def test_recipes_build_only_the_hooks_the_settings_switch_on(tiny):
    assert make_hooks(tiny, settings_for("paper")) == []
    hooks = make_hooks(tiny, settings_for("robust", ghost=0.2, bn_prior=0.5, skip_gradient=0.3))
    assert [type(h) for h in hooks] == [GhostNoise, BatchNormPrior, SkipGradient]
    assert hook_count(tiny.module) == 0  # built, not yet entered
