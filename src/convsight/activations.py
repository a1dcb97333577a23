"""Feature maps: what the chosen layers compute for an input."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convsight.layers import check_layers, forward_to
from convsight.models import Model


@torch.no_grad()
def activations(
    model: Model, pixels: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for pixel-space input ``pixels`` (N x C x H x W in [0, 1]).

    The forward pass stops at the deepest requested layer.
    """
    check_layers(model.module, layers)
    x = model.normalize(pixels.to(model.device))
    return {name: out.detach().cpu() for name, out in forward_to(model.module, x, layers).items()}
