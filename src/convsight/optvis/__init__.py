"""Feature visualization (Lucid's split): objectives, param, transforms, render.

>>> from convsight.optvis import render_channels, render_classes
>>> result = render_channels(model, "features.28", range(16), preset="robust")
>>> result.images  # 16 x 3 x 224 x 224, pixel space
"""

from convsight.optvis import objectives
from convsight.optvis.means import class_mean_images
from convsight.optvis.objectives import Objective
from convsight.optvis.render import (
    PRESETS,
    RenderResult,
    RenderSettings,
    parse_channels,
    render,
    render_channels,
    render_classes,
    settings_for,
)

__all__ = [
    "PRESETS",
    "Objective",
    "RenderResult",
    "RenderSettings",
    "class_mean_images",
    "objectives",
    "parse_channels",
    "render",
    "render_channels",
    "render_classes",
    "settings_for",
]
