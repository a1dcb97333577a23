"""Whole files only: everything is written to a temporary name and renamed into place.

File names that come from data (labels, image names, class folders, layer names) go through
:func:`safe_filename` (or :func:`out_file` / :func:`unique_names`); the writers refuse paths
with ``..`` and, given ``within``, paths that resolve outside the output folder. Files follow
the user's umask; convsight deletes only its own temporaries (:func:`remove_own_temporaries`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard, card_path

# Every temporary file convsight writes is named TEMP_PREFIX + name + "." + 8 hex digits +
# TEMP_SUFFIX; only such files are ever deleted by convsight (see remove_own_temporaries).
TEMP_PREFIX = ".convsight-"
TEMP_SUFFIX = ".part"
_TEMPORARY = re.compile(re.escape(TEMP_PREFIX) + r".*\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
_KEPT_PUNCTUATION = "._+-"
_READABLE_PUNCTUATION = " !#%&'()+,;=@[]^{}~"  # also safe in names on every file system
_MAX_NAME_BYTES = 200  # a file name, leaving room for the temporary's prefix and suffix (255)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{d}{i}" for d in ("COM", "LPT") for i in range(10)
}


def safe_filename(text: str, max_length: int = 80, readable: bool = False) -> str:
    """``text`` (a label, image name, class folder or layer name) as one safe file-name part.

    Letters and digits of any script, ``.``, ``_``, ``+`` and ``-`` are kept (after NFKC
    normalization, so look-alike slashes become slashes first); every other run of characters
    (slashes, control and format characters, spaces, other punctuation) becomes ``_``;
    ``readable=True`` (class folders, whose name is the class label) also keeps spaces and
    ``!#%&'()+,;=@[]^{}~``. Leading dots and spaces and trailing ones are dropped, so the
    result is never ``.``/``..``, hidden, empty or a path; Windows device names get a ``_`` in
    front. Cut to ``max_length`` bytes of UTF-8 (at most 200), keeping a short extension.
    """
    text = unicodedata.normalize("NFKC", str(text))
    kept: list[str] = []
    for char in text:
        ok = (
            char in _KEPT_PUNCTUATION
            or (readable and char in _READABLE_PUNCTUATION)
            or unicodedata.category(char)[0] in "LNM"
        )
        if ok:
            kept.append(char)
        elif not kept or kept[-1] != "_":
            kept.append("_")
    cleaned = "".join(kept).lstrip(". ")
    limit = max(min(max_length, _MAX_NAME_BYTES), 12)
    if len(cleaned.encode("utf-8")) > limit:
        stem, dot, extension = cleaned.rpartition(".")
        if not dot or not stem or len(extension.encode("utf-8")) > 8:
            stem, extension = cleaned, ""
        else:
            extension = "." + extension
        stem = _cut_utf8(stem, limit - len(extension.encode("utf-8"))).rstrip(". ")
        cleaned = stem + extension
    cleaned = cleaned.rstrip(". ")
    if not cleaned or cleaned.startswith("."):
        cleaned = "_" + cleaned
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return cleaned


def _cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (never inside a character)."""
    return text.encode("utf-8")[: max(limit, 0)].decode("utf-8", "ignore")


def unique_names(
    names: Sequence[str],
    taken: Iterable[str] = (),
    max_length: int = 80,
    readable: bool = False,
    extension: bool = False,
) -> list[str]:
    """:func:`safe_filename` of each of ``names``, made distinct from one another and from
    ``taken`` (compared case-insensitively): a clash gets ``-2``, ``-3``, ... (before the file
    extension when ``extension``), in order, so the same list always gives the same names and
    a longer list keeps the names of its start."""
    used = {t.casefold() for t in taken}
    result = []
    for name in names:
        safe = safe_filename(name, max_length, readable)
        stem, dot, ext = safe.rpartition(".") if extension else ("", "", "")
        if not (dot and stem):
            stem, dot, ext = safe, "", ""
        candidate, n = safe, 1
        while candidate.casefold() in used:
            n += 1
            candidate = f"{stem}-{n}{dot}{ext}"
        used.add(candidate.casefold())
        result.append(candidate)
    return result


def out_file(out: str | os.PathLike, *parts: str) -> Path:
    """``out/part/...`` with each part made safe; refuses a result that resolves outside ``out``.

    Use it for every output path that contains text from data (labels, file names, layers).
    """
    root = Path(out)
    path = root.joinpath(*(safe_filename(p, max_length=200) for p in parts))
    check_inside(path, root)
    return path


def check_inside(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Raise unless ``path`` (symlinks resolved) lies inside ``root``."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ConvsightError(
            f"refusing to write {path}: it resolves outside the output folder {root}"
        )


OUT_MARKER = ".convsight-output"
"""The file that marks a folder as convsight's output folder (written by
:func:`prepare_out_dir`); the command line writes into a folder that holds other files only
with ``--force``."""


def check_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """``--out`` as a Path when it names a folder convsight may write into: a new folder, an
    empty one, or one convsight marked as its own (:data:`OUT_MARKER`); a folder holding
    other files only with ``force``. Reads only: nothing is created."""
    if not str(out).strip():
        raise ConvsightError("--out must name a folder, not an empty string")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConvsightError(f"output path {path} exists and is not a folder")
    if force or not path.is_dir() or (path / OUT_MARKER).is_file():
        return path
    try:
        foreign = next(iter(os.scandir(path)), None)
    except OSError as exc:
        raise ConvsightError(f"cannot read output folder {path}: {exc.strerror}") from exc
    if foreign is not None:
        raise ConvsightError(
            f"output folder {path} holds files convsight did not write (such as "
            f"'{foreign.name}'); choose a new or empty folder, or pass --force to write into "
            "it (files of the same name are replaced)"
        )
    return path


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder (and parents) and mark it as convsight's (:data:`OUT_MARKER`);
    fail clearly if it is a file or not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvsightError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvsightError(f"cannot create output folder {out}: {exc.strerror}") from exc
    if not os.access(out, os.W_OK):
        raise ConvsightError(f"output folder {out} is not writable")
    if not (out / OUT_MARKER).is_file():
        write_text(out / OUT_MARKER, "This folder holds convsight's output.\n")
    return out


@contextmanager
def out_dir_kept_if_written(out: str | os.PathLike) -> Iterator[Path]:
    """:func:`prepare_out_dir`; if the block fails and the folder it made is still empty, remove it.

    For work that can fail late (training that diverges): a failed run leaves no empty folder.
    """
    created = not Path(out).exists()
    path = prepare_out_dir(out)
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and {p.name for p in path.iterdir()} <= {OUT_MARKER}:
            (path / OUT_MARKER).unlink(missing_ok=True)
            path.rmdir()
        raise


def is_own_temporary(name: str) -> bool:
    """Whether a file name is one of convsight's temporary names (see :func:`atomic_path`)."""
    return _TEMPORARY.match(name) is not None


def remove_own_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete convsight's own temporary files left directly in ``folder`` by an interrupted
    run (never recursing, never touching any other file); the number deleted."""
    count = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if is_own_temporary(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            count += 1
    return count


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing folder)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    folder = folder.resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _write_error(exc: OSError, path: Path) -> ConvsightError | None:
    """The one-sentence error for a full disk or quota, or a folder that may not be written
    (None for any other OSError)."""
    if exc.errno == errno.ENOSPC:
        return ConvsightError(f"no space left on {_mount_point(path)} while writing {path}")
    if exc.errno == getattr(errno, "EDQUOT", None):
        return ConvsightError(f"disk quota exceeded on {_mount_point(path)} while writing {path}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConvsightError(f"permission denied while writing {path}")
    if exc.errno == errno.EROFS:
        return ConvsightError(f"cannot write {path}: {_mount_point(path)} is read-only")
    return None


def _temporary_name(path: Path) -> Path:
    """A new, empty temporary file beside ``path``; created with mode 0666 less the umask."""
    name = _cut_utf8(path.name, 120)
    for _ in range(100):
        tmp = path.parent / f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            )
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_path(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A path with a ``..`` part is refused, and so is one that resolves outside ``within`` (the
    output folder) when given; missing parent folders are created (inside ``within``). The file
    gets the user's umask. A full disk or a denied write is one sentence
    (``ConvsightError``); the temporary is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    if ".." in path.parts:
        raise ConvsightError(f"refusing to write {path}: an output path may not contain '..'")
    if within is not None:
        check_inside(path, within)
    tmp: Path | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary_name(path)
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            error = _write_error(exc, path)
            if error is not None:
                raise error from exc
            raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def json_data(value: Any) -> Any:
    """``value`` as plain JSON data: dicts, lists, numbers (NaN and infinities as None),
    strings, None; tensors, arrays and paths converted."""
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: Any, within: str | os.PathLike | None = None) -> Path:
    """Write ``data`` as indented, strict JSON (tensors, arrays and paths converted; NaN and
    infinities written as null)."""
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path, within) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_text(path: str | os.PathLike, text: str, within: str | os.PathLike | None = None) -> Path:
    """Write a text file (UTF-8)."""
    with atomic_path(path, within) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_figure(
    path: str | os.PathLike,
    figure: Figure,
    dpi: int = 100,
    within: str | os.PathLike | None = None,
) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, within) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    return Path(path)


def write_npz(
    path: str | os.PathLike, within: str | os.PathLike | None = None, **arrays: Any
) -> Path:
    """Save arrays (tensors converted) as a compressed ``.npz``."""
    data: dict[str, Any] = {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()
    }
    with atomic_path(path, within) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **data)
    return Path(path)


def write_checkpoint(path: str | os.PathLike, module: nn.Module, card: ModelCard) -> Path:
    """Save the state dict (readable with ``weights_only=True``) and its card beside it."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    buffer = io.BytesIO()  # torch's own writer turns a full disk into a RuntimeError
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())  # write errors (a full disk) surface as OSError
    write_json(card_path(path), card.to_dict())
    return path
