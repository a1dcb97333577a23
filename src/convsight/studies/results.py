"""What a study returns: a typed result with its arrays, the files it wrote and ``to_json()``.

Every study returns a subclass of :class:`Result`. ``to_json()`` is exactly what the study's
JSON file on disk holds, so a caller never reads that file back to learn what it just computed;
``files`` lists what was written (empty for a result that was not saved). ``save(folder)``
writes the files (the command line calls it); in a notebook a result shows itself
(``_repr_html_``: its facts and pictures inline) and ``show()`` draws the pictures with
matplotlib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from convsight.errors import ConvsightError
from convsight.report.notebook import MAX_FACTS, Tile, result_html, show_tiles, tiles_figure


@dataclass(kw_only=True)
class Result:
    """The common part of every study's result: the files written, its JSON and its views."""

    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """What the study's JSON file holds (plain JSON types only)."""
        raise NotImplementedError(f"{type(self).__name__} has no JSON form")

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write the result's files into the folder ``out``; returns them (also ``files``)."""
        raise ConvsightError(
            f"{type(self).__name__} is written while it runs (its files: "
            f"{', '.join(map(str, self.files[:3])) or 'none'}); it has no save()"
        )

    # -- views --------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        """The heading of the views: the result's kind and its model."""
        kind = type(self).__name__.removesuffix("Result")
        model = getattr(self, "model", None)
        return f"{kind}: {model}" if isinstance(model, str) else kind

    def tiles(self) -> list[Tile]:
        """The result's pictures with their captions, in order (none by default)."""
        return []

    def facts(self) -> list[tuple[str, Any]]:
        """A few facts for the table of the inline view: by default the plain values at the
        top of :meth:`to_json` (text, numbers, flags)."""
        try:
            data = self.to_json()
        except NotImplementedError:
            return []
        plain = (str, int, float, bool)
        return [(k, v) for k, v in data.items() if isinstance(v, plain)][:MAX_FACTS]

    def _repr_html_(self) -> str:
        return result_html(self.title, self.facts(), self.tiles())

    def headline(self) -> str:
        """The result in a line: its title, how many pictures, the files written."""
        files = f"{len(self.files)} files in {self.files[0].parent}" if self.files else "not saved"
        return f"{self.title} ({len(self.tiles())} pictures; {files})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text view: the headline, not every tensor of the dataclass."""
        printer.text(self.headline())

    def figure(self, columns: int = 8) -> Figure:
        """The pictures as one matplotlib figure (captions as titles)."""
        return tiles_figure(self.title, self.tiles(), columns)

    def show(self, columns: int = 8) -> None:
        """Draw the pictures: inline in a notebook, else in a matplotlib window."""
        show_tiles(self.title, self.tiles(), columns)
