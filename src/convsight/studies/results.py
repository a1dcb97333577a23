"""What a study returns: a typed result with its arrays, the files it wrote and ``to_json()``.

Every study returns a subclass of :class:`Result`. ``to_json()`` is exactly what the study's
JSON file on disk holds, so a caller never reads that file back to learn what it just computed;
``files`` lists what was written (empty for a result that was not saved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class Result:
    """The common part of every study's result: the files written, and its JSON."""

    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """What the study's JSON file holds (plain JSON types only)."""
        raise NotImplementedError(f"{type(self).__name__} has no JSON form")
