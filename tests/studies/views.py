"""What the tests of the studies' results share: their inline views and their files."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsight.models import Model
from convsight.report.notebook import MAX_TILES

IMAGE = re.compile(r"<img src=['\"]data:image/png;base64,")


def assert_shows(result: Any, captions: list[str]) -> str:
    """``result``'s inline HTML: one embedded PNG per tile (at most :data:`MAX_TILES`) and
    each of ``captions`` (escaped) among the tiles' captions and in the page."""
    page = result._repr_html_()
    tiles = result.tiles()
    assert tiles, "no pictures"
    assert len(IMAGE.findall(page)) == min(len(tiles), MAX_TILES)
    shown = [tile.caption for tile in tiles]
    for caption in captions:
        assert caption in shown, (caption, shown)
        assert html.escape(caption) in page
    return page


def names_and_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


DATA_URI = "src='data:image/png;base64,"


def small_model() -> Model:
    """A tiny conv net made a Model from Python (:meth:`Model.from_module`): 3 x 16 x 16
    input, convolutions ``0`` (4 channels) and ``2`` (6 channels), three named classes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    return Model.from_module(net, 16, labels=["ant", "bee", "cow"], name="small")


def check_views(result: Any, tiles: int, captions: Sequence[str]) -> str:
    """The inline HTML holds one PNG data URI per tile and each caption; the figure has one
    axes per tile. Returns the HTML."""
    assert len(result.tiles()) == tiles
    html = result._repr_html_()
    assert html.count(DATA_URI) == tiles
    for caption in captions:
        assert caption in html, caption
    assert len(result.figure().axes) == tiles
    return html


def _without_timings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_timings(v) for k, v in data.items() if "seconds" not in k}
    if isinstance(data, list):
        return [_without_timings(v) for v in data]
    return data


def same_files(saved: Sequence[Path], direct: Sequence[Path]) -> None:
    """Two runs wrote files of the same names, in the same order, with the same bytes (a JSON
    file: the same data but for its timings)."""
    assert [p.name for p in saved] == [p.name for p in direct]
    for a, b in zip(saved, direct, strict=True):
        if a.suffix == ".json":
            same = _without_timings(json.loads(a.read_text())) == _without_timings(
                json.loads(b.read_text())
            )
        else:
            same = a.read_bytes() == b.read_bytes()
        assert same, a.name


def nothing_written(folder: Path) -> bool:
    """``folder`` (the working directory of a run without ``out``) is still empty."""
    return not any(folder.iterdir())
