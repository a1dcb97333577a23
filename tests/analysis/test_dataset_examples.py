"""The receptive field measured one random input at a time: the same field as a batch."""

from __future__ import annotations

import torch
from torch import nn

from convsight.analysis.dataset_examples import _measure_field
from convsight.layers import forward_to
from convsight.models import Model


def batch_field(model: Model, layer: str, size: tuple[int, int], trials: int):
    """The reference: every random input in one batch, one backward pass."""
    x = torch.randn(trials, model.card.channels, *size, requires_grad=True)
    out = forward_to(model.module, x, [layer])[layer]
    ly, lx = out.shape[-2], out.shape[-1]
    out[:, :, ly // 2, lx // 2].sum().backward()
    assert x.grad is not None
    seen = x.grad.abs().sum((0, 1)) > 0
    return seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten(), (ly, lx)


def test_one_input_at_a_time_reaches_the_pixels_of_the_whole_batch():
    """ReLUs gate the gradient, so one input reaches fewer pixels than several: the union
    over the inputs taken one at a time equals the batch's, drawn from the same numbers."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 3, padding=1),
    )  # fmt: skip
    for conv in net[::2]:
        nn.init.normal_(conv.weight)  # one channel: one input's ReLUs shut most paths
        nn.init.zeros_(conv.bias)
    model = Model.from_module(net, input_size=16, channels=1, name="relu-net")
    torch.manual_seed(3)
    single = _measure_field(model, "6", (16, 16), 1)
    torch.manual_seed(3)
    one_by_one = _measure_field(model, "6", (16, 16), 8)
    torch.manual_seed(3)
    reference = batch_field(model, "6", (16, 16), 8)
    for got, expected in zip(one_by_one[:2], reference[:2], strict=True):
        assert torch.equal(got, expected)
    assert one_by_one[2] == reference[2] == (16, 16)
    assert len(reference[0]) == len(reference[1]) == 9  # the whole 9 x 9 field
    assert len(single[0]) * len(single[1]) < len(reference[0]) * len(reference[1])
