"""Scores without gradients: engines chosen by name, target scores and predicted classes."""

from __future__ import annotations

from typing import Any

import torch

from convsight.engines.base import (
    DEFAULT_ENGINE,
    FORWARD_ENGINES,
    Engine,
    ForwardEngine,
    chunks,
    forward_batch,
)
from convsight.engines.engine import Pixels, ScoreEngine
from convsight.engines.frozen import FrozenEngine
from convsight.engines.layout import memory_format_for
from convsight.engines.occlusion import IncrementalEngine
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import Target

ENGINE_TYPES: dict[Engine, type[ScoreEngine]] = {
    cls.name: cls for cls in (IncrementalEngine, FrozenEngine, ScoreEngine)
}
"""Every engine by its name: the one place a name becomes an engine."""


def score_engine(model: Model, name: Engine) -> ScoreEngine:
    """The engine called ``name`` for ``model``."""
    if name not in ENGINE_TYPES:
        raise ConvsightError(f"unknown engine '{name}' ({', '.join(ENGINE_TYPES)})")
    return ENGINE_TYPES[name](model)


def forward_scores(
    model: Model,
    pixels: Pixels,
    targets: torch.Tensor | Target,
    batch_size: int = 64,
    output: str = "logit",
    total: int | None = None,
    engine: ForwardEngine = DEFAULT_ENGINE,
    run: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Target scores for many pixel inputs, no gradients (:meth:`ScoreEngine.scores`).

    ``engine`` "eager" runs the module itself, "frozen" a traced and frozen copy (see
    :func:`~convsight.engines.frozen.frozen_module`), which falls back to the module when it
    cannot be built or fails. ``run``, when given, receives ``engine`` (the one that ran) and
    ``fallback`` (why not the one asked for, or None).
    """
    if engine not in FORWARD_ENGINES:
        raise ConvsightError(f"unknown engine '{engine}' ({' or '.join(FORWARD_ENGINES)})")
    runner = score_engine(model, engine)
    result = runner.scores(pixels, targets, batch_size, output, total)
    if run is not None:
        run.update(engine=runner.ran, fallback=runner.fallback)
    return result


def predict_classes(
    model: Model, pixels: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """The predicted class of each pixel input (a CPU tensor), no gradients, ``batch_size``
    rows per forward pass (default :func:`~convsight.engines.base.forward_batch`), so memory
    holds one batch's activations whatever the number of inputs."""
    layout, _ = memory_format_for(model)
    size = batch_size or forward_batch(model.device)
    classes = torch.empty(pixels.shape[0], dtype=torch.long)
    with torch.no_grad():
        for part in chunks(pixels.shape[0], size):
            x = model.normalize(pixels[part].to(model.device))
            scores = model.module(x.contiguous(memory_format=layout))
            if scores.dim() != 2:
                raise ConvsightError(
                    f"model '{model.card.name}' gives {' x '.join(map(str, scores.shape))} "
                    "scores, not one row of class scores per image, so it has no predicted "
                    "class: give a target (segment:CLASS, output:INDEX; SegmentationTarget, "
                    "OutputTarget in Python)"
                )
            classes[part] = scores.argmax(1).cpu()
    return classes
