"""Checkpoints: state dicts read without running code, and modules fitted to them (the class
count of their head, the channels of their first convolution)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.models.extras import import_extra
from convsight.paths import require_file


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: ``.safetensors`` with safetensors (no pickle at
    all), anything else with ``torch.load(weights_only=True)``."""
    path = Path(path)
    require_file(path, "weights file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it half reads
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise ConvsightError(f"cannot read checkpoint {path}: permission denied") from exc
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a pickle of tensors at all
            raise ConvsightError(
                f"cannot read checkpoint {path}: it is not a PyTorch state dict file "
                "(or it is corrupt)"
            ) from exc
        raise ConvsightError(
            f"checkpoint {path} contains code or objects convsight will not load (only "
            "tensors are read, weights_only=True); re-save its state dict with "
            "torch.save(model.state_dict(), ...)"
        ) from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise ConvsightError(f"cannot read checkpoint {path}: {first_line(exc)}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConvsightError(f"checkpoint {path} does not hold a state dict of tensors")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors = import_extra("safetensors.torch", "reading .safetensors files", "safetensors")
    try:
        data = safetensors.load_file(str(path), device="cpu")
    except PermissionError as exc:
        raise ConvsightError(f"cannot read safetensors file {path}: permission denied") from exc
    except Exception as exc:  # SafetensorError, or an OSError of the file
        raise ConvsightError(
            f"cannot read safetensors file {path}: {first_line(exc)} (or it is not one)"
        ) from exc
    if not data:
        raise ConvsightError(f"safetensors file {path} holds no tensors")
    return data


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _last_linear(module: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` (a classifier's head), if any."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _head_outputs(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of ``module``'s head as ``state`` gives its weight (None: not in it)."""
    head = _last_linear(module)
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def input_channels(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of ``module``'s first convolution as ``state`` gives its weight."""
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    weight = state.get(f"{convs[0]}.weight") if convs else None
    if weight is None or weight.ndim != 4 or module.get_submodule(convs[0]).groups != 1:
        return None
    return int(weight.shape[1])


HEAD_FLAG = "--num-classes {n} (num_classes in a card)"
"""How to give a head of ``n`` classes, for a message of weights that do not fit."""


def load_weights(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    features_only: bool,
    head_flag: str = HEAD_FLAG,
) -> None:
    """Load ``state`` into ``module``; weights that do not fit are refused in one sentence
    (missing, unexpected and reshaped keys, and ``head_flag`` for another class count)."""
    expected = module.state_dict()
    if features_only:
        prefix = "features."
        expected = {k: v for k, v in expected.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
            )
            classes = _head_outputs(module, state)
            if classes is not None and classes != _head_outputs(module, expected):
                parts.append(
                    f"their head has {classes} classes: give {head_flag.format(n=classes)}"
                )
        raise ConvsightError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=not features_only)


Build = Callable[[int | None, int | None], tuple[nn.Module, ModelCard]]
"""``build(num_classes, channels)`` -> module and card (None: the architecture's default)."""


def fit_to_weights(
    build: Build, state: Mapping[str, torch.Tensor] | None, fields: Mapping[str, Any]
) -> tuple[nn.Module, ModelCard]:
    """Build the module; unless ``fields`` say them, its class count follows the head's shape
    in ``state`` and its input channels the first convolution's (rebuilt when they differ)."""
    given = (fields.get("num_classes"), fields.get("channels"))
    module, card = build(*given)
    if state is None:
        return module, card
    own = module.state_dict()
    have = (_head_outputs(module, own), input_channels(module, own))
    found = (_head_outputs(module, state), input_channels(module, state))
    wanted = tuple(g or f or h for g, f, h in zip(given, found, have, strict=True))
    if wanted != have:
        module, card = build(*wanted)
    return module, card


def replace_head(module: nn.Module, num_classes: int) -> str:
    """Swap the last ``nn.Linear`` for a new one with ``num_classes`` outputs; return its name.

    The name is kept, so torchvision's ``get_model(name, num_classes=k)`` fits the new weights.
    """
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConvsightError("the model has no linear layer to replace with a new head")
    name, old = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return name
