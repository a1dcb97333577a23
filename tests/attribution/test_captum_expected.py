"""captum's own expected values, on captum's own small test model, ported.

``BasicModel_ConvNet_One_Conv`` and the numbers below come from captum's test suite
(``captum/testing/helpers/basic_models.py``; ``tests/attr/test_guided_backprop.py``,
``test_deconvolution.py``, ``layer/test_grad_cam.py``): hand-checkable values, independent of
how either library computes them. The model reaches convsight as a user's module would, through
:meth:`Model.from_module` (a 1 x 4 x 4 input, identity normalization).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convsight.attribution import get_method
from convsight.models import Model


class BasicModelConvNetOneConv(nn.Module):
    """captum's ``BasicModel_ConvNet_One_Conv``: conv 1->2 (3x3, all ones), ReLU, view, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, 1)
        self.relu1 = nn.ReLU()
        self.fc1 = nn.Linear(8, 4)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.copy_(torch.ones(2, 1, 3, 3))
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], dim=1))
            self.fc1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = x.view(-1, 8)
        return self.relu2(self.fc1(x))


@pytest.fixture
def model() -> Model:
    return Model.from_module(BasicModelConvNetOneConv(), input_size=4, channels=1)


def _input() -> torch.Tensor:
    return torch.arange(16, dtype=torch.float).view(1, 1, 4, 4)


GUIDED = [[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]]
DECONV = [[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]]


@pytest.mark.parametrize(("name", "expected"), [("guided", GUIDED), ("deconvnet", DECONV)])
def test_rectifier_methods_give_captums_expected_values(model, name, expected):
    got = get_method(name, model).attribute(_input(), 0)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float).view(1, 1, 4, 4))


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ("conv1", [[11.25, 13.5], [20.25, 22.5]]),  # test_simple_input_conv
        ("relu1", [[0.0, 4.0], [28.0, 32.5]]),  # test_simple_input_conv_relu
    ],
)
def test_gradcam_gives_captums_expected_values(model, layer, expected):
    got = get_method("gradcam", model).attribute(_input(), 0, layer=layer, relu=False)
    assert torch.allclose(got, torch.tensor(expected).view(1, 1, 2, 2))
