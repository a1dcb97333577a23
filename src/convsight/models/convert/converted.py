"""What models converted from another framework's file (ONNX, Keras) share: card, check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import MAX_CHANNELS, ModelCard
from convsight.models.model import Model


def converted_card(
    kind: str,
    path: Path,
    card: ModelCard | None,
    channels: int,
    size: tuple[int | None, int | None],
    output: tuple[int | None, ...] | None,
    key: int | str | None = None,
) -> ModelCard:
    """The given card checked against the file's input, or one built from it.

    ``kind`` names the file ("ONNX", "Keras"); ``size`` is (height, width), None where the
    file leaves it free; ``output`` the shape of the scores with their batch dimension (None:
    not known yet, a file with several outputs); ``key`` the built card's ``output``. A built
    card takes its input size from the file, resizes photos as every card does, and has
    identity normalization (the caller warns).
    """
    height, width = size
    arch = f"{kind.lower()}:{path.name}"
    if card is not None:
        if card.channels != channels:
            raise ConvsightError(
                f"model card '{card.name}' says {card.channels} input channels but {kind} file "
                f"{path} takes {channels}"
            )
        fixed = (height or card.input_size[0], width or card.input_size[1])
        if tuple(card.input_size) != fixed:
            raise ConvsightError(
                f"model card '{card.name}' says {card.input_size[1]}x{card.input_size[0]} "
                f"pixels but {kind} file {path} takes only {fixed[1]}x{fixed[0]}"
            )
        return dataclasses.replace(card, arch=arch)
    if height is None or width is None:
        raise ConvsightError(
            f"{kind} file {path} takes images of any height and width; give the size it was "
            "trained on with --input-size HxW (or input.size in a model card)"
        )
    if channels > MAX_CHANNELS:
        raise ConvsightError(
            f"{kind} file {path} takes {channels} input channels; convsight shows images of "
            f"at most {MAX_CHANNELS}"
        )
    return ModelCard(
        name=path.stem,
        arch=arch,
        input_size=(height, width),
        channels=channels,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        num_classes=output[1] if output and len(output) == 2 and output[1] else None,
        features_only=output is not None and len(output) != 2,
        output=key,
        source=f"{kind} file {path} (no card: identity normalization)",
    )


def checked_model(
    module: nn.Module,
    card: ModelCard,
    kind: str,
    path: Path,
    by: str,
    difference: float,
    tolerance: float,
) -> Model:
    """The converted module as a Model whose card records the check against the original
    (``by``: "onnxruntime" or "keras"): ``<by>_max_abs_diff`` and ``<by>_tolerance``."""
    options = {
        **card.arch_options,
        f"{by}_max_abs_diff": difference,
        f"{by}_tolerance": tolerance,
    }
    label = "Keras" if by == "keras" else by
    check = f"{label} check: max abs difference {difference:.3g} (tolerance {tolerance:.3g})"
    source = f"{card.source}; {check}" if card.source else f"{kind} file {path}; {check}"
    model = Model(module, dataclasses.replace(card, arch_options=options, source=source))
    model.check_card()
    return model


def first_line(exc: BaseException) -> str:
    """The first line of an error from a converter or its runtime, for one sentence."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200].rstrip(".")
