"""Which pixels a decision rests on: attribution methods with one contract.

``METHODS[name](model).attribute(pixels, target, **options)``; see :mod:`.base`. A method class
with a short ``name`` registers itself in ``METHODS`` when its module is imported; every class
there can be imported from this package by its class name.
"""

from __future__ import annotations

# isort: off
# The method families, imported in the order ``METHODS`` (and the command line) lists them.
from convsight.attribution.gradient import InputXGradient, IntegratedGradients, Saliency
from convsight.attribution.noise import NoiseTunnel, SmoothGrad
from convsight.attribution.backprop import DeconvNet, GuidedBackprop, rectifier_rule
from convsight.attribution.cam import (
    CAM,
    GradCAM,
    GradCAMPlusPlus,
    ScoreCAM,
    cam_layer,
    default_cam_layer,
    upsample_maps,
)
from convsight.attribution.perturbation import Occlusion

# isort: on
from convsight.attribution.base import METHODS, Method, Target, check_inputs, resolve_targets
from convsight.attribution.options import Option
from convsight.errors import ConvsightError
from convsight.models import Model


def method_class(name: str) -> type[Method]:
    """The method called ``name`` (short names: saliency, ixg, smoothgrad, ig, guided, ...)."""
    key = name.strip().lower()
    if key not in METHODS:
        raise ConvsightError(f"unknown method '{name}'; methods: {', '.join(METHODS)}")
    return METHODS[key]


def get_method(name: str, model: Model) -> Method:
    """An instance of the method called ``name`` for ``model``."""
    return method_class(name)(model)


def __getattr__(name: str) -> type[Method]:
    """A registered method class by its class name (``VarGrad``), as if imported here."""
    for cls in METHODS.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "NoiseTunnel",
    "Occlusion",
    "Option",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Target",
    "cam_layer",
    "check_inputs",
    "default_cam_layer",
    "get_method",
    "method_class",
    "rectifier_rule",
    "resolve_targets",
    "upsample_maps",
]
