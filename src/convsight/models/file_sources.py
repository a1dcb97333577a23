"""Model files that carry their architecture: TorchScript ``.ts``, and ``.onnx`` and Keras 3
``.keras`` files through their converters (:mod:`convsight.models.convert`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convsight.errors import ConvsightError
from convsight.models.card import (
    ModelCard,
    card_path,
    identity_normalization,
    warn_no_normalization,
)
from convsight.models.checkpoints import first_line
from convsight.models.extras import import_extra, is_missing, missing_extra
from convsight.models.model import Model
from convsight.models.source import FileSource, LoadRequest


def fields_card(path: Path, arch: str, fields: Mapping[str, Any]) -> ModelCard:
    """A card built from the fields given alone (identity normalization when no mean/std)."""
    channels = fields.get("channels", 3)
    return ModelCard(
        **{
            "name": path.stem,
            "arch": arch,
            "channels": channels,
            "source": f"{path.name}, card from the command line",
            **identity_normalization(channels, path.stem, {"mean", "std"} - set(fields)),
            **fields,
        }
    )


class TorchScriptSource(FileSource):
    """TorchScript files, read with ``torch.jit.load``; their card beside them or given."""

    def open(self, request: LoadRequest) -> Model:
        """The TorchScript file with the card given, or one from the card fields."""
        path, card, fields = Path(request.spec), request.card, request.fields
        if card is None and "input_size" not in fields:
            raise ConvsightError(
                f"TorchScript model {path} has no card beside it ({card_path(path).name}), so "
                "its input size and normalization are unknown: give --input-size HxW (and "
                f"--mean, --std), or write a card with `convsight card {path} --input-size HxW "
                "--mean M --std S`"
            )
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of export
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ConvsightError(
                f"cannot read TorchScript model {path}: {first_line(exc)}"
            ) from exc
        model = Model(module, card or fields_card(path, "torchscript", fields))
        model.probe_classes()
        return model


@dataclass(frozen=True, kw_only=True)
class ConvertedSource(FileSource):
    """Files of another framework, converted to PyTorch by ``module.function`` (an optional
    extra, imported when a file is loaded; ``what`` says what needs it)."""

    module: str
    function: str
    what: str

    def open(self, request: LoadRequest) -> Model:
        """The file through its converter, with the card given or one from the card fields."""
        path, card, fields = Path(request.spec), request.card, dict(request.fields)
        kind, extra, packages = self.arch or "", self.extra or "", self.packages
        load = getattr(import_extra(self.module, self.what, extra, packages), self.function)
        if card is None and "input_size" in fields:
            card, fields = fields_card(path, kind, fields), {}
        chosen = {"output": fields["output"]} if card is None and "output" in fields else {}
        try:
            model = load(path, card, **chosen)
        except ImportError as exc:
            if is_missing(exc, *packages):
                raise missing_extra(self.what, extra) from exc
            raise
        if fields:
            model.card = model.card.updated(**fields)
        if card is None:  # the converter's own card: identity normalization is a guess
            unset = {"mean": set(model.card.mean) == {0.0}, "std": set(model.card.std) == {1.0}}
            warn_no_normalization(
                model.card.name, [k for k, v in unset.items() if v and k not in fields]
            )
        model.probe_classes()
        return model


TORCHSCRIPT = TorchScriptSource(
    name="TorchScript",
    spec="FILE.ts",
    note="card beside it or --input-size ...; whole-model methods only (no layer hooks)",
    arch="torchscript",
    suffixes=(".ts",),
)
ONNX, KERAS = (
    ConvertedSource(
        name=name,
        spec=f"FILE{suffix}",
        note=note,
        arch=kind,
        extra=kind,
        packages=packages,
        suffixes=(suffix,),
        module=f"convsight.models.convert.{kind}",
        function=f"load_{kind}",
        what=f"reading {suffix} files",
    )
    for name, kind, suffix, note, packages in (
        ("ONNX", "onnx", ".onnx", "converted to PyTorch", ("onnx", "onnx2torch", "onnxruntime")),
        ("Keras", "keras", ".keras", "Keras 3, converted to PyTorch", ("keras",)),
    )
)
