"""The frozen engine: a traced, frozen, inference-optimized copy of the network."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch

from convsight.engines.base import DEFAULT_ENGINE, cached, failure_reason
from convsight.engines.engine import Network, ScoreEngine
from convsight.engines.layout import memory_format_for
from convsight.models import Model


def frozen_module(model: Model, example: torch.Tensor) -> tuple[Network | None, str | None]:
    """A frozen, inference-optimized copy of the network, or None and why not.

    Perturbation methods only run the network forwards, many times; a traced and frozen copy
    (batch norm folded into convolutions, activations fused) runs those up to twice as fast on
    CPU. The copy is checked against the module on ``example`` (pixels) and on a second batch
    size, and kept on the model until a parameter changes; a network that cannot be traced, or
    whose copy disagrees, gets None and the reason. The model itself is never changed. Caveat of
    tracing: Python control flow and forward hooks are fixed as they were when traced, which
    is why this is opt-in (``engine="frozen"``).
    """
    module = model.module

    def build() -> tuple[Network | None, str | None]:
        layout, _ = memory_format_for(model)
        x = model.normalize(example[:1].to(model.device)).contiguous(memory_format=layout)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(copy.deepcopy(module).eval(), x, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                expected, got = module(x), frozen(x)
                twice = torch.cat([x, x])
                expected_twice, got_twice = module(twice), frozen(twice)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: run the module itself
            return None, f"the network cannot be traced and frozen ({failure_reason(exc)})"
        for want, have in ((expected, got), (expected_twice, got_twice)):
            if not isinstance(have, torch.Tensor) or have.shape != want.shape:
                return None, "the frozen copy gives outputs of another shape"
            if not torch.allclose(have, want, rtol=1e-3, atol=1e-4):
                return None, "the frozen copy gives other outputs than the network"
        return frozen, None

    return cached(model, "frozen", build)


def inference_module(model: Model, example: torch.Tensor) -> Network:
    """The frozen copy of :func:`frozen_module`, or the module itself where there is none."""
    frozen, _ = frozen_module(model, example)
    return model.module if frozen is None else frozen


class FrozenEngine(ScoreEngine):
    """Runs the frozen copy of :func:`frozen_module`; the module itself where there is none
    (or it fails), saying why."""

    name = "frozen"

    def network(self, example: Callable[[], torch.Tensor]) -> Network:
        frozen, self.fallback = frozen_module(self.model, example())
        if frozen is None:
            self.ran = DEFAULT_ENGINE
            return self.model.module
        self.ran = self.name
        return frozen
