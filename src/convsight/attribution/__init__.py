"""Which pixels a decision rests on: attribution methods with one contract.

``METHODS[name](model).attribute(pixels, target, **options)``; see :mod:`.base`. ``METHODS`` is
the one list of the methods the command line offers, in its order; :func:`register` adds one.
Each method's options are the keyword-only parameters of its ``_attribute`` (``cls.options``,
``cls.describe()``).
"""

from __future__ import annotations

from typing import TypeVar

from convsight.attribution.backprop import DeconvNet, GuidedBackprop, rectifier_rule
from convsight.attribution.base import Method, check_inputs
from convsight.attribution.cam import (
    CAM,
    GradCAM,
    GradCAMPlusPlus,
    ScoreCAM,
    cam_layer,
    default_cam_layer,
    upsample_maps,
)
from convsight.attribution.gradient import InputXGradient, IntegratedGradients, Saliency
from convsight.attribution.lrp import LRP
from convsight.attribution.noise import NoiseTunnel, SmoothGrad, SmoothGradSquared, VarGrad
from convsight.attribution.options import Option
from convsight.attribution.perturbation import Occlusion
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.targets import Target, resolve_targets

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Saliency,
        InputXGradient,
        IntegratedGradients,
        SmoothGrad,
        VarGrad,
        SmoothGradSquared,
        GuidedBackprop,
        DeconvNet,
        GradCAM,
        GradCAMPlusPlus,
        ScoreCAM,
        Occlusion,
        LRP,
    )
}
"""Every method the command line offers, by its short name, in the order it lists them."""

M = TypeVar("M", bound=Method)


def register(cls: type[M]) -> type[M]:
    """Offer method ``cls`` under its short name (``--methods NAME``), after the others;
    usable as a class decorator."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no short name to register it by")
    if METHODS.get(cls.name, cls) is not cls:
        raise TypeError(f"two attribution methods are called {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


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
    "LRP",
    "Method",
    "NoiseTunnel",
    "Occlusion",
    "Option",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SmoothGradSquared",
    "Target",
    "VarGrad",
    "cam_layer",
    "check_inputs",
    "default_cam_layer",
    "get_method",
    "method_class",
    "rectifier_rule",
    "register",
    "resolve_targets",
    "upsample_maps",
]
