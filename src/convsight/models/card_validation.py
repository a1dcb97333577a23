"""The checks of a ModelCard's fields: each bad field is refused in one sentence.

Field names in messages follow the card's JSON layout (``input.mean``, ``labels``...). The
checks read and normalize the fields of any object that has them (:class:`CardFields`), so
this module needs nothing of ``card.py``, which calls it.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from typing import Any, Final, Literal, Protocol

import numpy as np

from convsight.errors import ConvsightError
from convsight.models.labels import imagenet_labels

MAX_INPUT_SIDE = 4096
"""The largest input side (height or width, and resize) a card may give."""
MAX_CHANNELS = 4
MAX_NUM_CLASSES = 100_000
MAX_OUTPUT_KEY_CHARS = 200
"""The longest key the card's ``output`` may give."""
MAX_LABEL_CHARS = 1000
"""The longest class name a card may give (names become titles and file names)."""
AUTO: Final = "auto"
"""``resize="auto"``: the usual resize for the input size (see :func:`default_resize`)."""
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""How a photo may be resampled to the model's input (``input.interpolation``)."""


class CardFields(Protocol):
    """The fields of a model card that the checks read and normalize (a ModelCard's), by name."""

    arch: str
    arch_options: dict[str, Any]
    channels: int
    features_only: bool
    input_size: tuple[int, int]
    interpolation: str
    labels: list[str] | None
    mean: tuple[float, ...]
    name: str
    num_classes: int | None
    output: int | str | None
    resize: int | None | Literal["auto"]
    source: str
    std: tuple[float, ...]


def validate_card(card: CardFields) -> None:
    """Check every field of ``card`` (and normalize their types); a bad one raises one sentence."""
    if not isinstance(card.name, str):
        raise ConvsightError(f"model card name must be text, not {card.name!r}")
    if not isinstance(card.arch, str) or not card.arch.strip():
        raise bad_field(card, "arch", f"it must name an architecture, not {card.arch!r}")
    _check_input(card)
    _check_classes(card)
    if not isinstance(card.features_only, bool):
        raise bad_field(
            card, "features_only", f"it must be true or false, not {show(card.features_only)}"
        )
    if not isinstance(card.arch_options, dict):
        raise bad_field(
            card, "arch_options", f"it must be an object, not {show(card.arch_options)}"
        )
    if not isinstance(card.source, str):
        raise bad_field(card, "source", f"it must be text, not {show(card.source)}")
    _check_output(card)


def _check_output(card: CardFields) -> None:
    """``output``: null, an index (a whole number) or a key (text of 1 to 200 characters)."""
    value = card.output
    if value is None:
        return
    if integer(value) is not None and not isinstance(value, str):
        card.output = integer(value)
    elif not isinstance(value, str) or not 1 <= len(value) <= MAX_OUTPUT_KEY_CHARS:
        raise bad_field(
            card,
            "output",
            "it must be an index (a whole number), a key (text of 1 to "
            f"{MAX_OUTPUT_KEY_CHARS} characters) or null, not {show(value)}",
        )


def bad_field(card: CardFields, field_name: str, problem: str) -> ConvsightError:
    """The one-sentence error of a bad field of ``card``."""
    name = f"'{card.name}'" if card.name else "(unnamed)"
    return ConvsightError(f"model card {name} has a bad {field_name}: {problem}")


def _check_input(card: CardFields) -> None:
    """``input``: size, channels, mean, std, resize and interpolation."""
    size: object = card.input_size  # as given: checked and normalized here
    side = integer(size)
    if side is not None:
        size = (side, side)
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = tuple(integer(s) for s in size)
    if (
        not isinstance(size, tuple)
        or None in size
        or not all(1 <= s <= MAX_INPUT_SIDE for s in size)
    ):
        raise bad_field(
            card,
            "input.size",
            f"it must be one or two whole numbers from 1 to {MAX_INPUT_SIDE}, "
            f"not {show(card.input_size)}",
        )
    card.input_size = size
    wanted = f"a whole number from 1 to {MAX_CHANNELS}"
    card.channels = _whole_number(card, "input.channels", card.channels, 1, MAX_CHANNELS, wanted)
    card.mean = channel_values(card, "input.mean", card.mean, positive=False)
    card.std = channel_values(card, "input.std", card.std, positive=True)
    _check_normalized_range(card)
    if card.resize == AUTO:
        card.resize = default_resize(size)
    if card.resize is not None:
        shortest = min(size)
        wanted = (
            f"a whole number from the input's shorter side ({shortest}) to {MAX_INPUT_SIDE}, "
            '"auto" or null'
        )
        card.resize = _whole_number(
            card, "input.resize", card.resize, shortest, MAX_INPUT_SIDE, wanted
        )
    if card.interpolation not in INTERPOLATIONS:
        raise bad_field(
            card,
            "input.interpolation",
            f"it must be one of {', '.join(INTERPOLATIONS)}, not {show(card.interpolation)}",
        )


def finite_float32(number: float) -> bool:
    """Whether ``number`` stays finite as a 32-bit float (1e308 does not)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(number)))


def _check_normalized_range(card: CardFields) -> None:
    """Pixels 0 and 1, normalized with the card's mean and std, must stay finite in 32-bit
    floats (a std of 1e-40 would turn every pixel into infinity)."""
    for value in (0.0, 1.0):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            pixel = (np.float32(value) - np.asarray(card.mean, dtype=np.float32)) / np.asarray(
                card.std, dtype=np.float32
            )
        if not np.isfinite(pixel).all():
            raise bad_field(
                card,
                "input.std",
                f"pixel value {value:g} normalized with mean {show(list(card.mean))} and std "
                f"{show(list(card.std))} overflows 32-bit floating point",
            )


def _check_classes(card: CardFields) -> None:
    """``labels`` and ``num_classes``, and that they agree (the count follows the labels)."""
    if isinstance(card.labels, str) and card.labels == "imagenet":
        card.labels = imagenet_labels()
    if card.labels is not None:
        labels = card.labels
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
            raise bad_field(
                card,
                "labels",
                f'it must be a list of class names or "imagenet", not {show(labels)}',
            )
        not_text = [label for label in labels if not isinstance(label, str)]
        if not_text:
            raise bad_field(
                card, "labels", f"every class name must be text, not {show(not_text[0])}"
            )
        if not labels:
            raise bad_field(card, "labels", "the list is empty (use null for no labels)")
        longest = max(labels, key=len)
        if len(longest) > MAX_LABEL_CHARS:
            raise bad_field(
                card,
                "labels",
                f"class name {show(longest)} has {len(longest)} characters, more than the "
                f"{MAX_LABEL_CHARS} a class name may have",
            )
        if len(labels) > MAX_NUM_CLASSES:
            raise bad_field(
                card, "labels", f"it names {len(labels)} classes, more than {MAX_NUM_CLASSES}"
            )
        card.labels = list(labels)
    if card.num_classes is not None:
        wanted = f"a whole number from 1 to {MAX_NUM_CLASSES}"
        card.num_classes = _whole_number(
            card, "num_classes", card.num_classes, 1, MAX_NUM_CLASSES, wanted
        )
    if card.labels is not None:
        if card.num_classes is None:
            card.num_classes = len(card.labels)
        elif card.num_classes != len(card.labels):
            raise bad_field(
                card,
                "labels",
                f"it names {len(card.labels)} classes but num_classes is {card.num_classes}",
            )


def _whole_number(
    card: CardFields, field_name: str, value: Any, low: int, high: int, wanted: str
) -> int:
    """``value`` as an int from ``low`` to ``high``; else the error saying it must be ``wanted``."""
    number = integer(value)
    if number is None or not low <= number <= high:
        raise bad_field(card, field_name, f"it must be {wanted}, not {show(value)}")
    return number


def channel_values(
    card: CardFields, field_name: str, values: Any, positive: bool
) -> tuple[float, ...]:
    """``values`` as one finite float per input channel (above 0 when ``positive``)."""
    wanted = "finite numbers above 0" if positive else "finite numbers"
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values] * card.channels  # one number for every channel
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise bad_field(card, field_name, f"it must be a list of {wanted}, not {show(values)}")
    result = []
    for value in values:
        if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
            raise bad_field(card, field_name, f"it must hold {wanted}, not {show(value)}")
        number = float(value)
        if not finite_float32(number) or (positive and np.float32(number) <= 0):
            wanted_here = f"{wanted} in 32-bit floating point (what the model computes in)"
            raise bad_field(card, field_name, f"it must hold {wanted_here}, not {show(value)}")
        result.append(number)
    if len(result) != card.channels:
        raise bad_field(
            card,
            field_name,
            f"it gives {len(result)} values for {card.channels} input channels",
        )
    return tuple(result)


def default_resize(size: tuple[int, int]) -> int:
    """The usual resize for a photo model of this input size: 256/224 of its shorter side
    from 64 pixels up, else the shorter side itself (a 32x32 or 28x28 model takes a photo
    resized to its side and centre-cropped, and an image of its size as it is)."""
    side = min(size)
    return side if side < 64 else round(side * 256 / 224)


def channel_count(value: Any) -> int:
    """``value`` as a channel count for default mean/std (1 when it is bad: the card refuses
    a bad count itself)."""
    count = integer(value)
    return count if count is not None and 1 <= count <= MAX_CHANNELS else 1


def integer(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (not a bool); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(float(value))  # a Real need not have __int__; this one is whole
    return None


def show(value: Any) -> str:
    """A short readable form of a bad value for an error message."""
    try:
        text = json.dumps(value) if isinstance(value, (list, tuple, dict, str)) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
