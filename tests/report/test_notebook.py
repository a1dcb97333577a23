"""The tiles made from a matplotlib figure or an image file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from convsight.report.notebook import THUMBNAIL, figure_tile, file_tile


def test_a_figure_tile_is_the_png_the_figure_writes():
    figure = Figure(figsize=(2, 1))
    figure.subplots().plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    tile = figure_tile(figure, "a line")
    assert tile.caption == "a line" and tile.image.dtype == np.uint8
    assert tile.image.shape == expected.shape and (tile.image == expected).all()


def test_a_file_tile_is_the_image_shrunk_or_none(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (1000, 500), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    tile = file_tile(tmp_path / "big.png", "big")
    assert tile is not None and tile.image.shape == (2 * THUMBNAIL, THUMBNAIL, 3)
    small = np.full((4, 6, 3), 7, np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    same = file_tile(tmp_path / "small.png")
    assert same is not None and (same.image == small).all()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert file_tile(tmp_path / "bad.png") is None and file_tile(tmp_path / "gone.png") is None


SHOW = [
    "import torch\n"
    "from convsight.report.notebook import Tile\n"
    "from convsight.studies.results import Result\n"
    "class Shown(Result):\n"
    "    def to_json(self):\n"
    "        return {'model': 'm'}\n"
    "    def tiles(self):\n"
    "        return [Tile(torch.rand(3, 8, 8), 'a'), Tile(torch.rand(1, 8, 8), 'b')]\n"
    "result = Shown()",
    "result.show()",
    "result",
]


@pytest.mark.slow
def test_in_a_notebook_show_draws_a_picture_and_the_text_view_is_one_line(tmp_path):
    """show() displays a PNG whatever matplotlib backend the kernel has (pyplot never
    imported), and a result's plain-text view is its headline, not its tensors."""
    from tests.notebooks import outputs, run_cells

    nb = run_cells(SHOW, tmp_path)
    _, shown, plain = (outputs(cell) for cell in nb.cells)
    assert [sorted(o["data"]) for o in shown] == [["image/png", "text/plain"]]
    (result,) = plain
    assert result["data"]["text/plain"] == "Shown (2 pictures; not saved)"
    assert result["data"]["text/html"].count("data:image/png;base64,") == 2
