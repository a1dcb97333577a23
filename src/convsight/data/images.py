"""Image files in, pixel tensors ([0, 1], C x H x W) shaped for a model out.

Decoding is guarded: the size in the file's header is checked before any pixel is decoded
(at most :data:`MAX_IMAGE_PIXELS`), a photo is resized only when its aspect ratio is sane
(at most :data:`MAX_ASPECT_RATIO`) and only the centre crop is ever resampled, so a tiny file
cannot claim gigabytes. High bit depths are read at their real range: 16-bit grey
(``I;16*``) is divided by 65535, 32-bit integer grey (``I``) is read as 16-bit data and
refused outside 0..65535, float grey (``F``) is taken as [0, 1] and refused outside it.
16-bit colour PNGs are decoded by Pillow to 8 bits per channel. Palette, CMYK, ``1``, ``LA``
and ``RGBA`` images are converted by Pillow; an alpha channel is dropped (not composited).
An EXIF orientation (a phone photo stored sideways) is applied, so an image is analysed as
every viewer shows it; :func:`exif_orientation` tells which was applied.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.paths import require_file, require_folder

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""The file name endings read as images, everywhere a folder of images is listed."""


def image_files(
    folder: str | os.PathLike, what: str = "image folder", recursive: bool = False
) -> list[Path]:
    """The image files of ``folder`` (``recursive``: and of its sub-folders), sorted; a missing
    folder, or one without images, fails in one sentence that calls it ``what``."""
    root = require_folder(folder, what)
    found = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConvsightError(f"no images in {what} {root}")
    return files


MAX_IMAGE_PIXELS = 64_000_000
"""The largest image (width x height, from the file's header) convsight decodes: 64 megapixels."""

MAX_ASPECT_RATIO = 20.0
"""The most elongated image a photo model takes (longer side / shorter side)."""

EXACT_ONLY = (
    " (its card's input.resize is null; --resize auto, or --resize N, resizes, centre-crops "
    "and converts photos)"
)
SKIPPED_REASONS_SHOWN = 3
"""How many different reasons for skipped images a message names (the most common first)."""

_HIGH_BIT_MODES = ("I", "F")  # and every "I;16..." mode
_ORIENTATION_TAG = 0x0112  # EXIF orientation: 1 as stored, 2-8 mirrored and/or rotated


def check_image_size(width: int, height: int, name: str = "image") -> None:
    """Refuse an image larger than :data:`MAX_IMAGE_PIXELS` (a decompression bomb)."""
    if width < 1 or height < 1:
        raise ConvsightError(f"{name} is {width}x{height} pixels, an empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise ConvsightError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), "
            f"more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels convsight decodes"
        )


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; a missing, non-image, corrupt or huge file raises.

    The size in the header is checked before decoding (:data:`MAX_IMAGE_PIXELS`); an EXIF
    orientation is applied (the image as viewers show it).
    """
    path = Path(path)
    require_file(path, "image")
    with _read_errors(path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            check_image_size(img.width, img.height, f"image {path}")
            img.load()
            return _upright(img)


def image_header_problem(path: str | os.PathLike, card: ModelCard) -> str | None:
    """Why ``path`` cannot be an input of ``card`` as far as its header tells (None: it may
    be; pixels that are corrupt, truncated or out of range show only when it is decoded by
    :func:`to_model_pixels`). No pixel is decoded; the reasons are the decoder's sentences."""
    path = Path(path)
    try:
        require_file(path, "image")
        with _read_errors(path), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_image_size(img.width, img.height, f"image {path}")
                turned = _orientation(img) in (5, 6, 7, 8)  # stored sideways
                width, height = (img.height, img.width) if turned else (img.width, img.height)
                _check_input(width, height, _channels(img), img.mode, card, str(path))
        if isinstance(card.resize, int):
            _check_aspect(width, height, card, str(path))
    except ConvsightError as exc:
        return str(exc)
    return None


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Pillow's and the file system's errors while reading ``path``, as one sentence each."""
    try:
        yield
    except ConvsightError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's size of the image
        size = f"{int(claimed.group(1)) / 1e6:.0f} megapixels" if claimed else "too large"
        raise ConvsightError(
            f"image {path} is {size}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
            "convsight decodes (a possible decompression bomb)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ConvsightError(f"{path} is not an image file that can be read") from exc
    except PermissionError as exc:
        raise ConvsightError(f"cannot read image {path}: permission denied") from exc
    except OSError as exc:
        if exc.errno is not None:  # the file system, not the decoder
            reason = (exc.strerror or str(exc)).lower()
            raise ConvsightError(f"cannot read image {path}: {reason}") from exc
        raise ConvsightError(f"image {path} is corrupt or truncated ({exc})") from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ConvsightError(f"image {path} is corrupt or truncated ({exc})") from exc


def _upright(img: Image.Image) -> Image.Image:
    """A copy of ``img`` with its EXIF orientation applied (as stored when the EXIF block
    itself cannot be read: the pixels are fine, only the tag is lost)."""
    try:
        return ImageOps.exif_transpose(img)
    except (ValueError, TypeError, KeyError, SyntaxError, struct.error):
        return img.copy()


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation :func:`load_image` applies to ``path`` (1: none; 6: stored turned
    90 degrees); read from the header only, 1 when the file has none or cannot be read."""
    try:
        with Image.open(path) as img:
            return _orientation(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation in an opened image's header (1: none, or unreadable)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _channels(img: Image.Image) -> int:
    if img.mode.startswith("I;16"):
        return 1
    return {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(
        img.mode, len(img.getbands())
    )


def _is_high_bit(img: Image.Image) -> bool:
    return img.mode in _HIGH_BIT_MODES or img.mode.startswith("I;")


def _high_bit_as_float(img: Image.Image, name: str) -> Image.Image:
    """A high-bit-depth grey image as a float ("F") image in [0, 1], scaled by its real range."""
    array = np.asarray(img)
    if img.mode.startswith("I;"):
        if array.dtype.kind != "u" or array.dtype.itemsize != 2:
            raise ConvsightError(
                f"{name} has pixel mode {img.mode}, which convsight does not read; "
                "save it as 8- or 16-bit unsigned grey, or as RGB"
            )
        scaled = array.astype(np.float32) / 65535.0
    elif img.mode == "I":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 65535:
            raise ConvsightError(
                f"{name} has 32-bit integer pixels from {low} to {high}; convsight reads "
                "integer grey images as 16-bit (0 to 65535), so save it as 8- or 16-bit"
            )
        scaled = array.astype(np.float32) / 65535.0
    else:  # "F"
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ConvsightError(f"{name} has floating-point pixels that are NaN or infinite")
        least, most = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if least < 0 or most > 1:
            raise ConvsightError(
                f"{name} has floating-point pixels from {least:g} to {most:g}; convsight reads "
                "float images only when they lie in [0, 1]"
            )
        scaled = array
    return Image.fromarray(np.ascontiguousarray(scaled, dtype=np.float32), mode="F")


def _check_aspect(width: int, height: int, card: ModelCard, name: str) -> int:
    """Refuse an image more elongated than :data:`MAX_ASPECT_RATIO`; its shorter side."""
    short, long = min(width, height), max(width, height)
    if long / short > MAX_ASPECT_RATIO:
        raise ConvsightError(
            f"{name} is {width}x{height} pixels, an aspect ratio of "
            f"{long / short:.0f}:1; model '{card.name}' takes photos of at most "
            f"{MAX_ASPECT_RATIO:.0f}:1"
        )
    return short


def _resize_and_crop(img: Image.Image, card: ModelCard, resize: int, name: str) -> Image.Image:
    """Resize the shorter side to ``resize``, the card's (or more, so that the image covers the
    input's height and width without stretching) and take the centre crop of ``input_size``,
    with the card's interpolation; an image that needs neither is returned as it is.

    Only the crop is resampled (Pillow's ``box``), so an elongated image never allocates its
    whole resized size.
    """
    h, w = card.input_size
    short = _check_aspect(img.width, img.height, card, name)
    scale = max(resize / short, w / img.width, h / img.height)
    if scale == 1 and (img.width, img.height) == (w, h):
        return img  # already the input's size: not resampled (a 28x28 digit stays exact)
    width, height = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    left, top = (width - w) // 2, (height - h) // 2
    sx, sy = img.width / width, img.height / height
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return img.resize((w, h), card.resample, box=box)


def _check_input(
    width: int, height: int, channels: int, mode: str, card: ModelCard, name: str
) -> None:
    """Refuse an image ``card`` cannot take whatever its pixels: a card that is neither grey
    nor RGB, a huge image, and for a card without ``resize`` the wrong size or channels."""
    if card.channels not in (1, 3):
        raise ConvsightError(
            f"model '{card.name}' takes {card.channels} input channels; image files can be "
            "given only to grey (1) or RGB (3) models"
        )
    check_image_size(width, height, name)
    h, w = card.input_size
    if card.resize is None:
        if (height, width) != (h, w):
            raise ConvsightError(
                f"{name} is {width}x{height} pixels; model '{card.name}' takes "
                f"exactly {w}x{h}{EXACT_ONLY}"
            )
        if channels not in (card.channels, card.channels + 1):  # alpha is dropped
            raise ConvsightError(
                f"{name} has {channels} channels ({mode}); model '{card.name}' "
                f"takes {card.channels}{EXACT_ONLY}"
            )


def to_model_pixels(img: Image.Image, card: ModelCard, name: str = "image") -> torch.Tensor:
    """A PIL image as the model's pixel input (C x H x W in [0, 1]).

    Models with ``card.resize`` (every card by default) take any photo (resize the shorter
    side, centre crop), with colour converted to the model's channel count. Models whose
    card has ``resize`` None (``--resize none``) take only images of exactly their size and
    channel count. See the module's docstring for bit depths, colour modes and size limits.
    """
    _check_input(img.width, img.height, _channels(img), img.mode, card, name)
    if _is_high_bit(img):
        img = _high_bit_as_float(img, name)
    if isinstance(card.resize, int):  # a card's "auto" is a number once validated
        img = _resize_and_crop(img, card, card.resize, name)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)[:, :, None]
        if card.channels == 3:
            array = np.repeat(array, 3, axis=2)
    else:
        try:
            img = img.convert("L" if card.channels == 1 else "RGB")
        except ValueError as exc:
            raise ConvsightError(
                f"{name} has colour mode {img.mode}, which cannot be converted to "
                f"{'grey' if card.channels == 1 else 'RGB'} ({exc})"
            ) from exc
        array = np.asarray(img, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
    return torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1).contiguous()


def load_image_tensor(path: str | os.PathLike, card: ModelCard) -> torch.Tensor:
    """Load ``path`` and shape it for the model: 1 x C x H x W pixels in [0, 1]."""
    return to_model_pixels(load_image(path), card, name=str(path)).unsqueeze(0)


def load_mask(path: str | os.PathLike, card: ModelCard) -> torch.Tensor:
    """A mask image (white is in: grey level 128 and up) in the model's input frame: H x W
    booleans, resized and cropped exactly as a photo of that size would be."""
    img = load_image(path).convert("L")
    if isinstance(card.resize, int):
        img = _resize_and_crop(img, card, card.resize, f"mask {path}")
    elif (img.height, img.width) != tuple(card.input_size):
        h, w = card.input_size
        raise ConvsightError(
            f"mask {path} is {img.width}x{img.height} pixels; model '{card.name}' takes "
            f"exactly {w}x{h}{EXACT_ONLY}"
        )
    return torch.from_numpy(np.asarray(img) >= 128)


@dataclass
class ImageChunk:
    """Up to ``size`` readable images of a file list (:func:`readable_image_chunks`): their
    pixels (k x C x H x W), their files, and the files left out on the way with the reason."""

    pixels: torch.Tensor
    files: list[Path]
    skipped: list[dict[str, str]]


def readable_image_chunks(
    files: Sequence[Path], card: ModelCard, size: int, what: str = "image"
) -> Iterator[ImageChunk]:
    """The readable files for ``card``, ``size`` images at a time, in order; each file is
    decoded only when its chunk is reached, so memory holds one chunk, not the folder.

    Every chunk but the last holds exactly ``size`` images; the last may hold none (only files
    skipped after the last image). No readable file at all raises once every file is tried.
    """
    size = max(1, int(size))
    pixels: list[torch.Tensor] = []
    kept: list[Path] = []
    skipped: list[dict[str, str]] = []
    read = 0
    for path in files:
        try:
            pixels.append(to_model_pixels(load_image(path), card, str(path)))
            kept.append(Path(path))
            read += 1
        except ConvsightError as exc:
            skipped.append({"path": str(path), "reason": str(exc)})
        if len(kept) == size:
            yield ImageChunk(torch.stack(pixels), kept, skipped)
            pixels, kept, skipped = [], [], []
    if not read:
        raise ConvsightError(
            f"no {what} could be read for model '{card.name}': {skipped_reasons(skipped)}"
        )
    if kept or skipped:
        stacked = torch.stack(pixels) if pixels else torch.empty(0, card.channels, *card.input_size)
        yield ImageChunk(stacked, kept, skipped)


class ImageStream:
    """The readable images of ``files`` for ``card``, ``size`` at a time
    (:func:`readable_image_chunks`, decoded when reached), and the files kept and skipped so
    far. :meth:`check` decodes the first chunk ahead, so a list without one readable image
    fails before any work; iterating yields that chunk and then the rest, once."""

    def __init__(
        self, files: Sequence[Path], card: ModelCard, size: int, what: str = "image"
    ) -> None:
        self.files = list(files)
        self.kept: list[Path] = []
        self.skipped: list[dict[str, str]] = []
        self._chunks = readable_image_chunks(self.files, card, size, what)
        self._first: ImageChunk | None = None

    def check(self) -> None:
        """Decode up to the first chunk; no readable file at all raises here."""
        if self._first is None:
            self._first = next(self._chunks, None)

    def _decoded(self) -> Iterator[ImageChunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            del first  # the caller holds the chunk only as long as it needs it
        yield from self._chunks

    def __iter__(self) -> Iterator[ImageChunk]:
        for chunk in self._decoded():
            self.kept += chunk.files
            self.skipped += chunk.skipped
            yield chunk


def load_readable_images(
    files: Sequence[Path], card: ModelCard, what: str = "image"
) -> tuple[torch.Tensor, list[Path], list[dict[str, str]]]:
    """Pixels (N x C x H x W) of every readable file for ``card``, the files kept, and the
    files left out with the reason (unreadable, corrupt, too large, wrong shape).

    For a folder of images: one bad file is skipped and reported, not an abort. Every image is
    held at once; a pass that can go a chunk at a time uses :func:`readable_image_chunks`.
    """
    chunks = list(readable_image_chunks(files, card, 64, what))
    pixels = torch.cat([c.pixels for c in chunks])
    kept = [f for c in chunks for f in c.files]
    return pixels, kept, [s for c in chunks for s in c.skipped]


def skipped_reasons(skipped: Sequence[dict[str, str]]) -> str:
    """Why files were left out, counted, the most common reason first: '2 files: "a.png is
    40x40 pixels; ..."; 1 file: "..."' (reasons that differ only in names and numbers count
    as one; the first file of each is quoted)."""
    groups: dict[str, list[str]] = {}
    for item in skipped:
        reason = str(item.get("reason", ""))
        key = re.sub(r"\d+", "#", reason.replace(str(item.get("path", "")), ""))
        groups.setdefault(key, []).append(reason)
    ordered = sorted(groups.values(), key=len, reverse=True)
    parts = [
        f'{_count(len(reasons), "file")}: "{reasons[0]}"'
        for reasons in ordered[:SKIPPED_REASONS_SHOWN]
    ]
    rest = ordered[SKIPPED_REASONS_SHOWN:]
    if rest:
        files = sum(len(reasons) for reasons in rest)
        parts.append(f"{_count(files, 'more file')} for {_count(len(rest), 'other reason')}")
    return "; ".join(parts) if parts else "no files"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"
