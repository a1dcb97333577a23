"""ModelCard: what a model takes and returns, the only place that knows normalization."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from convsight.errors import ConvsightError
from convsight.models.card_validation import (
    AUTO,
    INTERPOLATIONS,
    MAX_CHANNELS,
    MAX_INPUT_SIDE,
    MAX_NUM_CLASSES,
    channel_count,
    default_resize,
    integer,
    show,
    validate_card,
)
from convsight.models.labels import MAX_LABELS_BYTES, imagenet_labels, read_labels

__all__ = [
    "AUTO",
    "FIELD_NAMES",
    "IDENTITY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MAX_CHANNELS",
    "MAX_INPUT_SIDE",
    "MAX_LABELS_BYTES",
    "MAX_NUM_CLASSES",
    "CardWarning",
    "ModelCard",
    "card_path",
    "default_resize",
    "identity_normalization",
    "imagenet_labels",
    "parse_input_size",
    "parse_numbers",
    "parse_resize",
    "read_labels",
    "warn_no_normalization",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY = {"mean": 0.0, "std": 1.0}
FIELD_NAMES = (
    "name",
    "input_size",
    "channels",
    "mean",
    "std",
    "resize",
    "interpolation",
    "labels",
    "num_classes",
    "output",
)
"""The card fields a user may give without writing a card (``ModelCard.updated``)."""


class CardWarning(UserWarning):
    """Something a card leaves to a default the user should know about (no mean/std)."""


@dataclass
class ModelCard:
    """Input size and channels, normalization, class labels and provenance of a model.

    ``resize`` is the shorter side a photo is resized to (with ``interpolation``) before the
    centre crop to ``input_size``; ``None`` means the model takes only images of exactly
    ``input_size``; ``"auto"`` (the default, in Python as in JSON) is
    :func:`default_resize` of the input size: 256/224 of its shorter side from 64 pixels up,
    else the shorter side itself. ``labels="imagenet"`` stands for the 1000 ImageNet class
    names. ``output`` is the part of a forward's output that holds the scores when it is not
    one tensor: an index or a key (see :mod:`convsight.models.outputs`); None: one tensor.
    ``head`` records what convsight did to the module's output when it checked the card
    against the module (see :mod:`convsight.models.heads`); it is not read from a card file.
    """

    name: str
    arch: str
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: list[str] | None = None
    num_classes: int | None = None
    features_only: bool = False
    resize: int | None | Literal["auto"] = AUTO
    arch_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    interpolation: str = "bilinear"
    output: int | str | None = None
    head: str = "logits"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalize their types); a bad one raises one sentence.

        Field names in messages follow the JSON layout (``input.mean``, ``labels``...).
        """
        validate_card(self)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (the same layout as the cards in ../shared/models); the
        1000 ImageNet names are written as ``"imagenet"``."""
        data = asdict(self)
        if (
            self.labels is not None
            and len(self.labels) == 1000
            and self.labels == imagenet_labels()
        ):
            data["labels"] = "imagenet"
        data["input"] = {
            "size": list(data.pop("input_size")),
            "channels": data.pop("channels"),
            "mean": list(data.pop("mean")),
            "std": list(data.pop("std")),
            "resize": data.pop("resize"),
            "interpolation": data.pop("interpolation"),
        }
        return data

    def updated(self, **given: Any) -> ModelCard:
        """A validated copy with the fields in ``given`` (see :data:`FIELD_NAMES`) replaced.

        Fields that follow from a replaced one follow it unless given too: the resize from a
        new input size, the class count from new labels, labels of another count are dropped
        for a new class count, and a new channel count without mean/std gets identity
        normalization (with a :class:`CardWarning`).
        """
        unknown = sorted(set(given) - set(FIELD_NAMES))
        if unknown:
            raise ConvsightError(
                f"model card has no field {unknown[0]!r} (fields: {', '.join(FIELD_NAMES)})"
            )
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if "input_size" in given and "resize" not in given:
            data["resize"] = AUTO
        if "labels" in given and "num_classes" not in given:
            data["num_classes"] = None
        labels = self.labels
        if "num_classes" in given and "labels" not in given and labels is not None:
            if len(labels) != integer(given["num_classes"]):
                data["labels"] = None
        if "channels" in given and given["channels"] != self.channels:
            name = given.get("name", self.name) or "model"
            count = channel_count(given["channels"])
            data.update(identity_normalization(count, name, {"mean", "std"} - set(given)))
        data.update(given)
        return ModelCard(**data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> ModelCard:
        """Read and validate a card; ``labels: "imagenet"`` expands to the 1000 ImageNet names."""
        if not isinstance(data, dict):
            raise ConvsightError(f"model card '{name}' is not a JSON object")
        card_name = data.get("name") or name
        if not isinstance(card_name, str):
            raise ConvsightError(f"model card '{name}' has a bad name: {show(card_name)}")
        missing = [key for key in ("arch", "input") if key not in data]
        if missing:
            raise ConvsightError(f"model card '{card_name}' lacks the field {missing[0]!r}")
        inp = data["input"]
        if not isinstance(inp, dict):
            raise ConvsightError(
                f"model card '{card_name}' has a bad input: it must be an object with "
                f"size and channels, not {show(inp)}"
            )
        for key in ("size", "channels"):
            if key not in inp:
                raise ConvsightError(f"model card '{card_name}' lacks the field 'input.{key}'")
        size, channels = inp["size"], inp["channels"]
        if integer(size) is not None:
            size = (size, size)
        normalization = {k: inp[k] for k in ("mean", "std") if k in inp}
        absent = {"mean", "std"} - set(inp)
        normalization |= identity_normalization(channel_count(channels), card_name, absent)
        return cls(
            name=card_name,
            arch=data["arch"],
            input_size=size,
            channels=channels,
            labels=data.get("labels"),
            num_classes=data.get("num_classes"),
            features_only=data.get("features_only", False),
            resize=inp.get("resize", AUTO),
            interpolation=inp.get("interpolation", "bilinear"),
            arch_options=data.get("arch_options") or {},
            source=str(data.get("source") or ""),
            output=data.get("output"),
            **normalization,
        )

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read and validate a card from a JSON file."""
        path = Path(path)
        if path.is_dir():
            raise ConvsightError(f"model card {path} is a folder, not a JSON file")
        try:
            data = json.loads(path.read_text())
        except PermissionError as exc:
            raise ConvsightError(f"cannot read model card {path}: permission denied") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConvsightError(f"cannot read model card {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConvsightError(f"model card {path} is not a JSON object")
        try:
            return cls.from_dict(data, name=path.stem)
        except ConvsightError as exc:
            raise ConvsightError(f"{exc} (in {path})") from exc

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space ([0, 1], N x C x H x W) to the model's input space."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space back to pixel space (not clipped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def label(self, index: int) -> str:
        """The readable name of class ``index`` (its number when the card has no labels)."""
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    @property
    def resample(self) -> int:
        """The Pillow resampling filter of ``interpolation``."""
        from PIL import Image

        return {
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST,
        }[self.interpolation]


def identity_normalization(
    channels: int, name: str, missing: Iterable[str] = ("mean", "std")
) -> dict[str, tuple[float, ...]]:
    """Mean 0 and std 1 for every channel (the ``missing`` ones only), with a
    :class:`CardWarning` that says so."""
    missing = [key for key in ("mean", "std") if key in set(missing)]
    warn_no_normalization(name, missing)
    return {key: (IDENTITY[key],) * channels for key in missing}


def warn_no_normalization(name: str, missing: Iterable[str] = ("mean", "std")) -> None:
    """A :class:`CardWarning` that model ``name`` has no mean/std (the ``missing`` ones), so
    convsight uses 0 and 1; nothing when none is missing."""
    missing = [key for key in ("mean", "std") if key in set(missing)]
    if missing:
        warnings.warn(
            f"model '{name}' has no {'/'.join(missing)}, so convsight uses "
            f"{' and '.join(f'{k} {IDENTITY[k]}' for k in missing)} (pixels in [0, 1] go to it "
            "unchanged); give --mean and --std, or input.mean and input.std in its card",
            CardWarning,
            stacklevel=4,
        )


def parse_input_size(text: str) -> tuple[int, int]:
    """'64x128' (height x width) or '224' (a square) as (height, width)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        sides = [int(p.strip()) for p in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(1 <= s <= MAX_INPUT_SIDE for s in sides):
        raise ConvsightError(
            f"cannot read the input size '{text}': give HEIGHTxWIDTH (e.g. 64x128) or one "
            f"side for a square, from 1 to {MAX_INPUT_SIDE} pixels"
        )
    return sides[0], sides[1]


def parse_resize(text: str) -> int | None | Literal["auto"]:
    """``--resize``: a number of pixels, ``auto`` (the usual resize) or ``none`` (exact size)."""
    word = str(text).strip().lower()
    if word in ("none", "null"):
        return None
    if word == AUTO:
        return AUTO
    if word.isdigit() and 1 <= int(word) <= MAX_INPUT_SIDE:
        return int(word)
    raise ConvsightError(
        f"cannot read --resize '{text}': give the shorter side in pixels (1 to "
        f"{MAX_INPUT_SIDE}), auto or none"
    )


def parse_numbers(text: str, what: str) -> float | tuple[float, ...]:
    """'0.5' as one number (for every channel) or '0.485,0.456,0.406' as one per channel."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if not values:
        raise ConvsightError(
            f"cannot read {what} '{text}': give one number, or one per input channel "
            "separated by commas (e.g. 0.485,0.456,0.406)"
        )
    return values[0] if len(values) == 1 else values


def card_path(weights: Path) -> Path:
    """Where the card of a weights file lives: beside it, same stem, ``.json``."""
    return Path(weights).with_suffix(".json")
