"""What a request needs in memory against what the machine has: the memory available on a
device, the bytes a forward pass keeps for its backward pass, and the largest value of a knob
that still fits. Requests are checked with these before any large allocation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

USABLE = 0.9  # the share of the available memory a request may plan to fill
BACKWARD = 2.0  # a backward pass's peak: the tensors kept for it and their gradients
_NO_LIMIT = 1 << 60  # a cgroup v1 "limit" this large means none


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation can take on ``device`` now: free GPU memory on CUDA; on a CPU
    the least of the kernel's MemAvailable and the room left in this process's cgroup. None
    where it cannot be told (another OS, another accelerator)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    found = [n for n in (_mem_available(), _cgroup_room()) if n is not None]
    return min(found) if found else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _stat(text: str | None, key: str) -> int | None:
    """The number after ``key`` in a ``key value`` listing (/proc/meminfo, memory.stat)."""
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    return None


def _mem_available() -> int | None:
    return _stat(_read("/proc/meminfo"), "MemAvailable")


def _cgroup_room() -> int | None:
    """The limit of this process's memory cgroup less what it uses (reclaimable file cache
    counted as free); None without a limit."""
    for base, limit, usage, inactive in (
        ("/sys/fs/cgroup/", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory/", "memory.limit_in_bytes", "memory.usage_in_bytes",
         "total_inactive_file"),
    ):  # fmt: skip
        cap, used = _read(base + limit), _read(base + usage)
        if cap is None or used is None:
            continue
        if not cap.strip().isdigit() or int(cap) >= _NO_LIMIT:
            return None
        cache = _stat(_read(base + "memory.stat"), inactive) or 0
        return max(0, int(cap) - int(used) + cache)
    return None


def saved_bytes(run: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``run()`` runs, plus
    the tensors it returns (a tensor or a dict of them): each storage counted once, those of
    ``exclude`` (the model's parameters and buffers) not at all."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    kept: dict[int, int] = {}

    def note(tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage: count its elements
            kept[id(tensor)] = tensor.numel() * tensor.element_size()
            return
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        note(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    outputs = result.values() if isinstance(result, dict) else [result]
    for tensor in outputs:
        if isinstance(tensor, torch.Tensor):
            note(tensor)
    return sum(kept.values())


def largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest ``n`` in [low, high] with ``fits(n)`` (``fits`` true up to some point,
    false after it); None when not even ``low`` fits."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def readable_bytes(n: float) -> str:
    """'45 GB', '2.5 GB', '310 MB': the size in decimal units, about two digits."""
    if n >= 10e9:
        return f"{n / 1e9:,.0f} GB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{max(n, 1e6) / 1e6:.0f} MB"


def describe_available(device: torch.device | str, free: int) -> str:
    """'this machine has 21 GB available' (or the GPU's free memory)."""
    device = torch.device(device)
    where = f"{device} has" if device.type != "cpu" else "this machine has"
    return f"{where} {readable_bytes(free)} available"
