"""Which pixels a decision rests on: attribution methods with one contract.

``METHODS[name](model).attribute(pixels, target, **options)``; see :mod:`.base`.
"""

from __future__ import annotations

from convsight.attribution.backprop import DeconvNet, GuidedBackprop, rectifier_rule
from convsight.attribution.base import Method, Target, check_inputs, resolve_targets
from convsight.attribution.cam import (
    CAM,
    GradCAM,
    GradCAMPlusPlus,
    ScoreCAM,
    default_cam_layer,
    upsample_maps,
)
from convsight.attribution.gradient import (
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from convsight.attribution.perturbation import Occlusion
from convsight.errors import ConvsightError
from convsight.models import Model

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Saliency,
        InputXGradient,
        SmoothGrad,
        IntegratedGradients,
        GuidedBackprop,
        DeconvNet,
        GradCAM,
        GradCAMPlusPlus,
        ScoreCAM,
        Occlusion,
    )
}


def method_class(name: str) -> type[Method]:
    """The method called ``name`` (short names: saliency, ixg, smoothgrad, ig, guided, ...)."""
    key = name.strip().lower()
    if key not in METHODS:
        raise ConvsightError(f"unknown method '{name}'; methods: {', '.join(METHODS)}")
    return METHODS[key]


def get_method(name: str, model: Model) -> Method:
    """An instance of the method called ``name`` for ``model``."""
    return method_class(name)(model)


__all__ = [
    "CAM",
    "METHODS",
    "DeconvNet",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "Method",
    "Occlusion",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Target",
    "check_inputs",
    "default_cam_layer",
    "get_method",
    "method_class",
    "rectifier_rule",
    "resolve_targets",
    "upsample_maps",
]
