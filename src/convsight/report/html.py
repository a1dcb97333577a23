"""Static HTML pages from Jinja2 templates, every value escaped; no server needed."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from convsight.report.files import write_text


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("convsight.report", "templates"),
        autoescape=select_autoescape(["html", "css"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = lambda v, spec=".3g": format(v, spec) if v is not None else "–"
    env.globals["histogram_svg"] = histogram_svg
    return env


def render_page(template: str, **context: Any) -> str:
    """The HTML of ``template`` with ``context`` (strings escaped)."""
    return environment().get_template(template).render(**context)


def write_page(
    path: str | os.PathLike,
    template: str,
    within: str | os.PathLike | None = None,
    **context: Any,
) -> Path:
    """Write a page atomically (inside the output folder ``within`` when given)."""
    return write_text(path, render_page(template, **context), within=within)


def histogram_svg(values: list[float], bins: int = 30, width: int = 320, height: int = 120) -> str:
    """A small inline SVG bar chart of ``values`` (numbers only, so safe to mark as markup);
    NaN and infinities are left out."""
    from markupsafe import Markup

    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return Markup("")
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / span * bins), bins - 1)] += 1
    top = max(counts)
    bar = width / bins
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 16 - c / top * (height - 20):.1f}" '
        f'width="{bar - 1:.1f}" height="{c / top * (height - 20):.1f}"/>'
        for i, c in enumerate(counts)
        if c
    )
    return Markup(
        f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="histogram">{rects}'
        f'<text x="0" y="{height - 2}">{lo:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" text-anchor="end">{hi:.3g}</text></svg>'
    )
