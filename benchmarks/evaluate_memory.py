"""Peak memory of ``convsight evaluate`` as the folder grows: does it stay flat?

    python benchmarks/evaluate_memory.py [--counts 100,1000,10000]

For each count, that many generated 8x8 PNGs (random colours) go through ``convsight evaluate``
in a fresh process (the command line, as a user runs it) with a small TorchScript CNN written
here (one 3x3 conv of 32 channels at 64x64 -- the PNGs are resized up to it, as a photo model
resizes a thumbnail -- then a pooled linear head), saliency maps and the deletion curve. The peak
resident memory of each process is read from the kernel (its own ``VmHWM``) and set
beside the first (smallest) folder's. Writes benchmarks/results/evaluate_memory.json. Not a test
(tests/studies/test_hostile_memory.py checks 100 against 1,000 images); about 2 minutes on 2 cores
with the defaults, most of it the 10,000 images.

The helpers (:func:`write_model`, :func:`write_images`, :func:`evaluate_peak`) are shared with
that test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

INPUT_SIDE = 64  # the model's input: the 8x8 PNGs are resized up to it
CONV_CHANNELS = 32


def write_model(folder: Path, side: int = INPUT_SIDE, channels: int = CONV_CHANNELS) -> Path:
    """A seeded TorchScript CNN (3x3 conv, ReLU, pooled linear head, 4 classes) and its card
    beside it, in ``folder``; the card resizes any photo to ``side`` x ``side``."""
    import torch
    from torch import nn

    from convsight.models import ModelCard
    from convsight.report.files import card_path, write_json

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 4),
    ).eval()
    path = folder / "tiny.ts"
    with warnings.catch_warnings():  # torch.jit.script is deprecated, still the simplest file
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net).save(str(path))
    card = ModelCard(
        name="tiny",
        arch="torchscript",
        input_size=(side, side),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        labels=["a", "b", "c", "d"],
        resize=side,
    )
    write_json(card_path(path), card.to_dict())
    return path


def write_images(folder: Path, count: int, side: int = 8, seed: int = 0) -> Path:
    """``count`` random-colour ``side`` x ``side`` RGB PNGs in ``folder`` (made if missing)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{i:05d}.png")
    return folder


# The command line run in-process, then its own peak resident memory on stderr: VmHWM starts
# afresh at exec, unlike ru_maxrss, which a child inherits from its parent (a pytest process
# of several GB would hide the evaluate process's own peak).
RUN_AND_REPORT = """
import atexit, sys

def report():
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    sys.stderr.write(f"\\nVmHWM {peak}\\n")

atexit.register(report)
sys.argv[0] = "convsight"
from convsight.cli import main
main()
"""


def evaluate_command(model: Path, images: Path, out: Path, side: int = INPUT_SIDE) -> list[str]:
    """``convsight evaluate`` of saliency maps with the deletion curve (4 steps an image)."""
    return [
        sys.executable, "-c", RUN_AND_REPORT, "evaluate", str(model), "--images", str(images),
        "--methods", "saliency", "--metrics", "deletion", "--step", str(side * side // 4),
        "--out", str(out), "--quiet",
    ]  # fmt: skip


def peak_rss(command: list[str], env: dict[str, str] | None = None) -> tuple[int, int, str]:
    """Run ``command`` (one that ends by writing ``VmHWM KiB`` on stderr, as
    :data:`RUN_AND_REPORT` does); its exit status, its peak resident memory in bytes and the
    end of its stderr."""
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    errors = done.stderr.decode(errors="replace")
    peaks = [int(line.split()[1]) for line in errors.splitlines() if line.startswith("VmHWM ")]
    if not peaks:
        raise RuntimeError(f"no peak memory reported by {command[:3]}: {errors[-2000:]}")
    return done.returncode, peaks[-1] * 1024, errors[-2000:]


def evaluate_peak(
    model: Path, images: Path, out: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Peak memory and wall time of one ``convsight evaluate`` over ``images`` (in ``env``,
    default this process's environment); a failed run raises with its stderr."""
    return timed_peak(evaluate_command(model, images, out), "evaluate", env)


def timed_peak(command: list[str], name: str, env: dict[str, str] | None = None) -> dict:
    """Peak memory and wall time of one ``convsight NAME`` process (:func:`peak_rss`); a
    failed run raises with its stderr."""
    began = time.perf_counter()
    code, peak, tail = peak_rss(command, env)
    if code != 0:
        raise RuntimeError(f"convsight {name} exited with {code}: {tail}")
    return {"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - began, 2)}


def add_row(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append ``row`` with its peak in MiB and against the first row's, and print it."""
    first = rows[0]["peak_rss_bytes"] if rows else row["peak_rss_bytes"]
    row["peak_rss_mib"] = round(row["peak_rss_bytes"] / 2**20, 1)
    row["peak_over_first"] = round(row["peak_rss_bytes"] / first, 3)
    rows.append(row)
    print(row, flush=True)


def main() -> None:
    from common import write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="100,1000,10000", help="Folder sizes, in images.")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp))
        for count in counts:
            images = write_images(Path(tmp) / f"images{count}", count)
            row = {"images": count, **evaluate_peak(model, images, Path(tmp) / f"out{count}")}
            add_row(rows, row)
    write_result(
        "evaluate_memory",
        {
            "what": "peak resident memory of `convsight evaluate` over N generated 8x8 PNGs",
            "settings": {
                "model": f"TorchScript: conv 3x3/{CONV_CHANNELS} + ReLU + pooled linear head",
                "input": f"{INPUT_SIDE}x{INPUT_SIDE} (the PNGs resized up)",
                "command": evaluate_command(Path("MODEL"), Path("IMAGES"), Path("OUT")),
                "measured": "VmHWM of each evaluate process (its own peak RSS)",
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
