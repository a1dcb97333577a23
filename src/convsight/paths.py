"""Checks that a path the user gave is the kind of thing expected, in one sentence each."""

from __future__ import annotations

import os
from pathlib import Path

from convsight.errors import ConvsightError


def require_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` as a Path when it is a folder; else one sentence saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file():
        raise ConvsightError(f"{what} {path} is a file, not a folder")
    if path.exists():
        raise ConvsightError(f"{what} {path} is not a folder")
    raise ConvsightError(f"{what} {path} does not exist")


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path when it is a regular file; else one sentence saying what it is."""
    path = Path(path)
    if path.is_dir():
        raise ConvsightError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise ConvsightError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ConvsightError(f"{what} {path} is not a regular file")
    return path
