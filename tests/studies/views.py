"""What the tests of the results' views share: a result shows each of its tiles inline."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

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
