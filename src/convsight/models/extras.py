"""Optional model sources (timm, ONNX, Keras, safetensors): one sentence when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from convsight.errors import ConvsightError


def missing_extra(what: str, extra: str) -> ConvsightError:
    """``what`` needs the optional extra ``extra``, with the pip command that installs it."""
    return ConvsightError(f"{what} needs the {extra} extra: pip install 'convsight[{extra}]'")


def import_extra(module: str, what: str, extra: str, packages: tuple[str, ...] = ()) -> ModuleType:
    """Import ``module``; if one of ``packages`` (the extra's; default: ``module`` itself) is
    not installed, say which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if is_missing(exc, *(packages or (module,))):
            raise missing_extra(what, extra) from exc
        raise


def is_missing(exc: ImportError, *packages: str) -> bool:
    """Whether ``exc`` says one of ``packages`` (or a package of theirs) is not installed."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return bool(name) and name in {p.split(".")[0] for p in packages}
