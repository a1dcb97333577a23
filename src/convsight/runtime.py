"""Seeds and devices."""

from __future__ import annotations

import random

import numpy as np
import torch

from convsight.errors import ConvsightError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: same seed, same machine, same output."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable device is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConvsightError(f"unknown device '{device}'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvsightError(f"device '{device}' is not available on this machine")
    return dev
