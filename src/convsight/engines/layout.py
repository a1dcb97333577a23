"""Memory layout: channels-last where it is safe for the network and faster."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from convsight.engines.base import failure_reason
from convsight.layers import forward_to
from convsight.models import Model

LAYOUT_NAMES = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous"}


def memory_format_for(
    model: Model, layers: Sequence[str] | None = None
) -> tuple[torch.memory_format, str | None]:
    """The memory layout to run ``model`` in, and why it is not channels-last (or None).

    Channels-last makes convolutions faster (MobileNet v2 on CPU runs about twice as fast), but
    breaks code written for the default layout: ``x.view(x.size(0), -1)`` after a conv raises, and
    a custom kernel may read the wrong numbers. It is used only for a network with conv
    layers that gives the same outputs in both layouts on a probe batch; the answer is kept on
    the model per device, dtype and ``layers``, so the probe (two forward passes of two rows)
    runs once. With ``layers`` the probe is a truncated forward that compares their outputs:
    nothing after them runs, and only the part of the network that will be used is judged.
    """
    module = model.module
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    key = (str(model.device), tensor.dtype if tensor is not None else None)
    names = tuple(layers) if layers else None
    answers = model.engine_cache.setdefault("layout", {})
    if (key, names) not in answers:
        answers[(key, names)] = _probe_layout(model, names)
    return answers[(key, names)]


def _first_tensor(output: Any) -> Any:
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def _probe_layout(
    model: Model, layers: tuple[str, ...] | None
) -> tuple[torch.memory_format, str | None]:
    module, card = model.module, model.card
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return torch.contiguous_format, "no conv layer, so channels-last would not be faster"
    h, w = card.input_size
    pixels = torch.rand(2, card.channels, h, w, generator=torch.Generator().manual_seed(0))
    x = model.normalize(pixels.to(model.device))

    def run(inputs: torch.Tensor) -> Any:
        if layers is None:
            return _first_tensor(module(inputs))
        outputs = forward_to(module, inputs, layers)
        return torch.cat([_first_tensor(outputs[n]).flatten(1) for n in layers], 1)

    try:
        with torch.no_grad():
            expected = run(x.contiguous())
    except Exception:  # noqa: BLE001 - the network's own error surfaces in the real call
        return torch.contiguous_format, "the network failed on the probe batch"
    try:
        with torch.no_grad():
            got = run(x.contiguous(memory_format=torch.channels_last))
    except Exception as exc:  # noqa: BLE001 - any failure in channels-last: do not use it
        why = failure_reason(exc)
        return torch.contiguous_format, f"the network fails in channels-last layout ({why})"
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
        return torch.contiguous_format, "the network does not return a tensor"
    # loose: the layouts differ by rounding (TF32 on GPUs: ~1e-3); wrong numbers differ grossly
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if got.shape != expected.shape or not torch.allclose(
        got.float(), expected.float(), rtol=1e-2, atol=1e-3 * max(scale, 1.0)
    ):
        return torch.contiguous_format, "the network gives other outputs in channels-last layout"
    return torch.channels_last, None
