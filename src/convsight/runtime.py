"""Seeds and devices."""

from __future__ import annotations

import random

import numpy as np
import torch

from convsight.errors import ConvsightError

COMPUTE_DEVICES = ("cpu", "cuda", "mps")
"""Device types convsight runs on (``meta`` holds no data; others are untested)."""
MAX_SEED = 2**32 - 1
"""The largest seed (NumPy's seeds are 32-bit)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: same seed, same machine, same output."""
    if not 0 <= seed <= MAX_SEED:
        raise ConvsightError(f"a seed must be a whole number from 0 to {MAX_SEED}, not {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable device is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConvsightError(f"unknown device '{device}'") from exc
    if dev.type not in COMPUTE_DEVICES:
        raise ConvsightError(
            f"device '{device}' holds no data convsight can compute on; use auto, cpu or cuda"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvsightError(f"device '{device}' is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConvsightError(f"device '{device}' is not available on this machine")
    return dev


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively on ``device`` (a CUDA GPU that supports
    them; a CPU with AVX-512 BF16 or AMX through oneDNN), so that bf16 is about twice as fast
    as fp32 rather than emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
