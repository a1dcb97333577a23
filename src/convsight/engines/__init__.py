"""Engines: how a model's forward passes run, fast where that is exact for the model.

Memory layout (channels-last only where a probe shows it safe: :mod:`.layout`), a traced and
frozen copy of the network (:mod:`.frozen`), incremental inference for occluded images
(:mod:`.incremental`, :mod:`.occlusion`), and target scores or predicted classes without
gradients (:mod:`.scores`). Every engine is a :class:`ScoreEngine` chosen by its name
(:data:`Engine`) with :func:`score_engine`; it records the engine that ran and why any other
ran instead. What they build for a network is kept on its :class:`~convsight.models.Model`
(``engine_cache``) and goes with it.
"""

from __future__ import annotations

from convsight.engines.base import (
    AUTO,
    DEFAULT_ENGINE,
    ENGINE_CHOICES,
    ENGINES,
    FORWARD_ENGINES,
    Engine,
    EngineChoice,
    ForwardEngine,
    chunks,
    failure_reason,
    forward_batch,
    select,
)
from convsight.engines.engine import ScoreEngine, Windows
from convsight.engines.frozen import FrozenEngine, frozen_module, inference_module
from convsight.engines.layout import LAYOUT_NAMES, memory_format_for
from convsight.engines.occlusion import IncrementalEngine, incremental_net
from convsight.engines.scores import ENGINE_TYPES, forward_scores, predict_classes, score_engine

__all__ = [
    "AUTO",
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENGINE_CHOICES",
    "ENGINE_TYPES",
    "FORWARD_ENGINES",
    "LAYOUT_NAMES",
    "Engine",
    "EngineChoice",
    "ForwardEngine",
    "FrozenEngine",
    "IncrementalEngine",
    "ScoreEngine",
    "Windows",
    "chunks",
    "failure_reason",
    "forward_batch",
    "forward_scores",
    "frozen_module",
    "incremental_net",
    "inference_module",
    "memory_format_for",
    "predict_classes",
    "score_engine",
    "select",
]
