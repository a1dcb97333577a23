"""Feature maps: what the chosen layers compute for an input."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convsight.layers import check_layers, forward_to
from convsight.models import Model

ACTIVATION_BATCH = 16
"""Images per forward pass of :func:`activations` when none is given."""


@torch.no_grad()
def activations(
    model: Model,
    pixels: torch.Tensor,
    layers: Sequence[str],
    batch_size: int = ACTIVATION_BATCH,
) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for pixel-space input ``pixels`` (N x C x H x W in [0, 1]).

    The forward pass stops at the deepest requested layer and runs ``batch_size`` images at a
    time: besides the maps returned (on the CPU), memory holds one batch's activations.
    """
    check_layers(model.module, layers)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    size = max(1, batch_size)
    for start in range(0, max(1, pixels.shape[0]), size):  # an empty input still runs once
        x = model.normalize(pixels[start : start + size].to(model.device))
        for name, out in forward_to(model.module, x, layers).items():
            parts[name].append(out.detach().cpu())
    return {name: torch.cat(maps) for name, maps in parts.items()}
