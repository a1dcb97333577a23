"""Noise tunnels: any method averaged over noisy copies, the same as captum's NoiseTunnel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convsight.attribution import (
    GradCAM,
    GuidedBackprop,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
    SmoothGrad,
    get_method,
)
from convsight.attribution.gradient import sum_rows
from convsight.attribution.noise import SmoothGradSquared, VarGrad, noisy_copies
from convsight.models import Model
from tests.conftest import hook_count


def _pixels(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


class _Pixels(nn.Module):
    """Pixels in, logits out: what captum is given."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.net, self.card = model.module, model.card

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(self.card.normalize(p))


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(theirs.abs().max())
    assert ours.shape == theirs.shape and scale > 0, "a map of zeros proves nothing"
    err = float((ours - theirs).abs().max())
    assert err <= 1e-6 + rtol * scale, f"max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.slow
def test_smoothgrad_is_the_noise_tunnel_over_saliency(tiny):
    x, t = _pixels(), [0, 2, 3]
    options = {"samples": 5, "noise_level": 0.2, "batch_size": 4}
    ours = SmoothGrad(tiny).attribute(x, t, generator=torch.Generator().manual_seed(1), **options)
    tunnel = NoiseTunnel(Saliency(tiny))
    same = tunnel.attribute(x, t, generator=torch.Generator().manual_seed(1), **options)
    assert torch.equal(ours, same)
    assert tunnel.options == SmoothGrad.options


def test_the_noisy_copies_are_drawn_image_by_image_in_one_call():
    x = _pixels(2)
    noisy = noisy_copies(x, 4, 0.0, 0.5, torch.Generator().manual_seed(3))
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, x.repeat_interleave(4, 0) + noise * 0.5)
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    scaled = noisy_copies(x, 4, 0.1, None, torch.Generator().manual_seed(3))
    sigma = (0.1 * spread).repeat_interleave(4).view(-1, 1, 1, 1)
    assert torch.allclose(scaled, x.repeat_interleave(4, 0) + noise * sigma)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_tunnel_over_guided_backprop_matches_captum(tiny):
    from captum.attr import GuidedBackprop as CGuidedBackprop
    from captum.attr import NoiseTunnel as CNoiseTunnel

    x, t = _pixels(), [1, 0, 3]
    torch.manual_seed(11)
    theirs = CNoiseTunnel(CGuidedBackprop(_Pixels(tiny))).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.2, target=t
    )
    tunnel = NoiseTunnel(GuidedBackprop(tiny))
    assert [o.name for o in tunnel.options] == [
        "samples",
        "noise_level",
        "stdev",
        "batch_size",
        "generator",
    ]
    torch.manual_seed(11)
    _close(tunnel.attribute(x, t, samples=4, stdev=0.2, batch_size=5), theirs)
    assert tunnel.last_run["rectifier_calls"] > 0  # what the wrapped method records
    assert tunnel.last_run["engine"] == "eager" and hook_count(tiny.module) == 0


def test_a_wrapped_option_named_like_a_noise_option_keeps_its_own_default(tiny):
    x, t = _pixels(2), [0, 1]
    tunnel = NoiseTunnel(IntegratedGradients(tiny))
    names = [o.name for o in tunnel.options]
    assert names.count("batch_size") == 1 and "steps" in names and "rule" in names
    noise = {"samples": 3, "stdev": 0.1, "generator": torch.Generator().manual_seed(5)}
    ours = tunnel.attribute(x, t, steps=4, batch_size=2, **noise)
    noisy = noisy_copies(x, 3, 0.0, 0.1, torch.Generator().manual_seed(5))
    each = IntegratedGradients(tiny).attribute(noisy, [0, 0, 0, 1, 1, 1], steps=4)
    _close(ours, each.view(2, 3, 3, 32, 32).mean(1))


def test_a_tunnel_over_a_cam_gives_its_maps_at_the_input_resolution(tiny):
    x = _pixels(2)
    tunnel = NoiseTunnel(GradCAM(tiny))
    maps = tunnel.attribute(x, [0, 1], samples=2, stdev=0.0, layer="features.3")
    assert maps.shape == (2, 1, 16, 16)
    _close(maps, GradCAM(tiny).attribute(x, [0, 1], layer="features.3"))
    assert tunnel.to_heatmap(maps).shape == (2, 32, 32)


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_batching_the_noisy_rows_does_not_change_the_map(tiny, batch_size):
    x, t = _pixels(), [0, 2, 3]

    def smoothgrad(rows: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(9)
        return SmoothGrad(tiny).attribute(x, t, samples=4, batch_size=rows, generator=generator)

    whole, part = smoothgrad(12), smoothgrad(batch_size)
    _close(part, whole)


def test_sum_rows_adds_each_images_rows_in_chunks():
    seen = []

    def rows(part, image, index):
        seen.append((part.stop - part.start, image.tolist(), index.tolist()))
        values = (10 * image + index).float()
        return [values, values**2]

    first, second = sum_rows(2, 3, 4, rows, torch.device("cpu"))
    assert seen == [(4, [0, 0, 0, 1], [0, 1, 2, 0]), (2, [1, 1], [1, 2])]
    assert first.tolist() == [3.0, 33.0] and second.tolist() == [5.0, 100 + 121 + 144.0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,nt_type,absolute",
    [
        ("vargrad", "vargrad", False),
        ("vargrad", "vargrad", True),
        ("smoothgrad-sq", "smoothgrad_sq", True),
    ],
)
def test_vargrad_and_smoothgrad_squared_match_captum(tiny, name, nt_type, absolute):
    from captum.attr import NoiseTunnel as CNoiseTunnel
    from captum.attr import Saliency as CSaliency

    x, t = _pixels(), [2, 0, 1]
    torch.manual_seed(7)  # the same noise: drawn in one call, image by image, as captum does
    theirs = CNoiseTunnel(CSaliency(_Pixels(tiny))).attribute(
        x, nt_type=nt_type, nt_samples=4, stdevs=0.2, target=t, abs=absolute
    )
    method = get_method(name, tiny)
    torch.manual_seed(7)
    ours = method.attribute(x, t, samples=4, stdev=0.2, batch_size=5, absolute=absolute)
    _close(ours, theirs)
    assert method.heatmap(x, t, samples=2).shape == (3, 32, 32)
    assert hook_count(tiny.module) == 0


def test_vargrad_is_the_spread_and_smoothgrad_squared_the_mean_square_of_the_gradients(tiny):
    x, t = _pixels(2), [1, 3]
    noisy = noisy_copies(x, 5, 0.3, None, torch.Generator().manual_seed(4))
    grads = Saliency(tiny).attribute(noisy, [1] * 5 + [3] * 5, absolute=False).view(2, 5, 3, 32, 32)

    def run(cls, **options):
        generator = torch.Generator().manual_seed(4)
        return cls(tiny).attribute(x, t, samples=5, noise_level=0.3, generator=generator, **options)

    _close(run(VarGrad), grads.var(1, unbiased=False), rtol=1e-3)
    _close(run(SmoothGradSquared), grads.pow(2).mean(1))
    _close(run(SmoothGradSquared, absolute=False), grads.pow(2).mean(1))
    assert VarGrad.options != SmoothGrad.options  # VarGrad's own default: signed gradients
    assert {o.name: o.default for o in VarGrad.options}["absolute"] is False
    # without noise there is no spread, and the mean square is the gradient squared
    plain = Saliency(tiny).attribute(x, t)
    spread = VarGrad(tiny).attribute(x, t, samples=3, stdev=0.0)  # E[g²] - E[g]²: rounding
    assert float(spread.abs().max()) <= 1e-6 * float(plain.pow(2).max())
    _close(SmoothGradSquared(tiny).attribute(x, t, samples=3, stdev=0.0), plain**2)


def test_the_noise_variants_are_registered_with_their_papers():
    from convsight.attribution import METHODS, method_class

    assert method_class("VarGrad") is VarGrad and METHODS["smoothgrad-sq"] is SmoothGradSquared
    assert VarGrad.paper == "https://arxiv.org/abs/1810.03307"
    assert SmoothGradSquared.paper == "https://arxiv.org/abs/1806.10758"
