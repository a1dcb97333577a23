"""Feature visualization (Lucid's split): objectives, param, transforms, render; recipes
build those objects from a preset's settings, callbacks act around the steps.

>>> from convsight.optvis import render_channels, render_classes
>>> result = render_channels(model, "features.28", range(16), preset="robust")
>>> result.images  # 16 x 3 x 224 x 224, pixel space
"""

from convsight.optvis import objectives
from convsight.optvis.channels import parse_channels
from convsight.optvis.means import class_mean_images
from convsight.optvis.objectives import Objective
from convsight.optvis.recipes import Recipe, build
from convsight.optvis.render import (
    RenderResult,
    render,
    render_channels,
    render_classes,
    render_settings,
)
from convsight.optvis.settings import PRESETS, RenderSettings, settings_for

__all__ = [
    "PRESETS",
    "Objective",
    "Recipe",
    "RenderResult",
    "RenderSettings",
    "build",
    "class_mean_images",
    "objectives",
    "parse_channels",
    "render",
    "render_channels",
    "render_classes",
    "render_settings",
    "settings_for",
]
