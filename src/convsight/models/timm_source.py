"""``timm:NAME`` models: built by timm, carded from timm's own ``pretrained_cfg``."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import INTERPOLATIONS, ModelCard
from convsight.models.checkpoints import Build
from convsight.models.extras import import_extra
from convsight.models.model import Model
from convsight.models.source import NamedSource

TIMM_PREFIX = "timm:"


def timm_module() -> ModuleType:
    """The timm package, or one sentence naming the extra to install."""
    return import_extra("timm", "loading timm models", "timm")


def timm_installed() -> bool:
    """Whether timm is installed (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def timm_names() -> list[str]:
    """Every architecture timm can build (``timm:NAME`` takes any of them)."""
    return sorted(timm_module().list_models())


def check_timm_name(name: str) -> None:
    """An unknown timm architecture fails with the nearest names."""
    timm = timm_module()
    if name and timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    raise ConvsightError(
        f"timm has no model '{name}' (`convsight models --source timm` lists them){hint}"
    )


def build_timm(name: str, num_classes: int | None = None, channels: int | None = None) -> nn.Module:
    """A randomly initialized timm model (nothing is downloaded)."""
    check_timm_name(name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if channels is not None:
        kwargs["in_chans"] = channels
    try:
        return timm_module().create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # timm says why in its own words
        raise ConvsightError(
            f"timm cannot build '{name}' with {kwargs or 'its defaults'}: {_first_line(exc)}"
        ) from exc


def download_timm(name: str) -> nn.Module:
    """A timm model with its default pretrained weights (downloaded on first use)."""
    check_timm_name(name)
    try:
        return timm_module().create_model(name, pretrained=True)
    except Exception as exc:  # offline: huggingface_hub's LocalEntryNotFoundError, URLError...
        raise ConvsightError(
            f"could not download the pretrained weights of '{TIMM_PREFIX}{name}' "
            f"({_first_line(exc)}); offline, pass a local state dict with --weights FILE "
            "(.pt or .safetensors)"
        ) from exc


def timm_card(name: str, module: nn.Module, channels: int = 3) -> ModelCard:
    """The card timm's ``pretrained_cfg`` implies: input size, mean/std, interpolation,
    resize from the crop fraction, the module's class count (ImageNet names for 1000)."""
    timm = timm_module()
    config = timm.data.resolve_model_data_config(module)
    _, height, width = config["input_size"]
    crop = float(config.get("crop_pct") or 0.875)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    if len(mean) != channels:  # a model built with another in_chans: the channels' average
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    interpolation = config.get("interpolation")
    num_classes = getattr(module, "num_classes", None) or None
    pretrained = getattr(module, "pretrained_cfg", None) or {}
    origin = pretrained.get("hf_hub_id") or pretrained.get("url") or "timm"
    return ModelCard(
        name=name,
        arch=TIMM_PREFIX + name,
        input_size=(int(height), int(width)),
        channels=channels,
        mean=mean,
        std=std,
        labels="imagenet" if num_classes == 1000 else None,  # type: ignore[arg-type]
        num_classes=num_classes,
        resize=max(math.floor(min(height, width) / crop), min(height, width)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        source=f"timm {name} (pretrained_cfg of {origin})",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class TimmSource(NamedSource):
    """timm's architectures as ``timm:NAME``, carded from timm's ``pretrained_cfg``."""

    def matches(self, spec: str) -> bool:
        """Whether ``spec`` is ``timm:NAME``."""
        return spec.startswith(TIMM_PREFIX)

    def listing(self) -> list[str]:
        """Every ``timm:NAME`` timm can build."""
        return [TIMM_PREFIX + name for name in timm_names()]

    def count(self) -> int | None:
        """How many architectures timm builds (None: timm is not installed)."""
        return len(timm_names()) if timm_installed() else None

    def pretrained(self, spec: str) -> Model:
        """The timm model with its default pretrained weights."""
        name = spec[len(TIMM_PREFIX) :]
        module = download_timm(name)
        return Model(module, timm_card(name, module))

    def builder(self, spec: str, options: dict[str, Any]) -> Build:
        """The untrained timm model with the class count and input channels asked for."""
        name = spec[len(TIMM_PREFIX) :]

        def build(num_classes: int | None, channels: int | None) -> tuple[nn.Module, ModelCard]:
            module = build_timm(name, num_classes, channels)
            return module, timm_card(name, module, channels or 3)

        return build

    def build(self, card: ModelCard, folder: Path) -> nn.Module | None:
        """The timm model ``card`` names (none for features only)."""
        if card.features_only:
            return None
        return build_timm(card.arch.partition(":")[2], card.num_classes, card.channels)


TIMM = TimmSource(
    name="timm",
    spec="timm:NAME (timm:convnext_atto, ...)",
    note="card from timm's pretrained_cfg; weights downloaded on first use; offline "
    "--weights FILE (.pt or .safetensors)",
    arch="timm",
    arch_help="timm:NAME",
    listable=True,
    extra="timm",
    packages=("timm",),
)
