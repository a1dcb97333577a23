"""Peak memory of ``convsight atlas`` as its dataset grows: does it stay flat?

    python benchmarks/atlas_memory.py [--counts 1000,10000,100000]

For each count, that many generated 8x8 PNGs (random colours) are the ``--dataset`` of
``convsight atlas`` in a fresh process (the command line, as a user runs it): VGG16's conv
stack with the shared weights (``$CONVSIGHT_SHARED/models/vgg16_hed_features.pt``; the PNGs
are resized up to its 224x224 RGB input, 0.6 MB of pixels each), its first conv layer
``features.0`` (64 channels), two of them rendered with the paper preset at 2 steps (the render
is not what is measured) and the top 9 examples of every channel. The dataset pass streams the
folder (a batch of images decoded at a time, fixed-size statistics per channel), so
the peak resident memory of each process (its own ``VmHWM``) should stay beside the first
(smallest) folder's. Writes benchmarks/results/atlas_memory.json. Not a test
(tests/studies/atlas/test_streamed_dataset.py checks a few thousand images); 10,000 images take
about 5 minutes on 2 cores, 100,000 over an hour (a pass that held them would need 60 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _evaluate_memory() -> Any:
    """benchmarks/evaluate_memory.py (its model, images and peak measure are shared)."""
    spec = importlib.util.spec_from_file_location("evaluate_memory", HERE / "evaluate_memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODEL = "vgg16"
WEIGHTS = "models/vgg16_hed_features.pt"  # under $CONVSIGHT_SHARED
LAYER = "features.0"


def atlas_command(images: Path, out: Path, run: str, shared: str) -> list[str]:
    """``convsight atlas`` of two channels of :data:`LAYER`, with ``images`` as its dataset."""
    return [
        sys.executable, "-c", run, "atlas", MODEL, "--weights", f"{shared}/{WEIGHTS}",
        "--layers", LAYER, "--channels", "0-1",
        "--dataset", str(images), "--top-k", "9", "--presets", "paper", "--steps", "2",
        "--out", str(out), "--quiet",
    ]  # fmt: skip


def atlas_peak(images: Path, out: Path, env: dict[str, str] | None = None) -> dict:
    """Peak memory and wall time of one ``convsight atlas`` over ``images``; a failed run
    raises with its stderr."""
    bench = _evaluate_memory()
    shared = os.environ.get("CONVSIGHT_SHARED", str(HERE.parent.parent / "shared"))
    command = atlas_command(images, out, bench.RUN_AND_REPORT, shared)
    return bench.timed_peak(command, "atlas", env)


def main() -> None:
    from common import write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1000,10000,100000", help="Dataset sizes, in images.")
    args = parser.parse_args()
    bench = _evaluate_memory()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(c) for c in args.counts.split(",")):
            images = bench.write_images(Path(tmp) / f"images{count}", count)
            row = {"images": count, **atlas_peak(images, Path(tmp) / f"out{count}")}
            bench.add_row(rows, row)
    write_result(
        "atlas_memory",
        {
            "what": "peak resident memory of `convsight atlas` over a dataset of N generated PNGs",
            "settings": {
                "model": f"{MODEL} ({WEIGHTS}), layer {LAYER}",
                "input": "3x224x224 (the 8x8 PNGs resized up)",
                "command": atlas_command(Path("IMAGES"), Path("OUT"), "RUN", "SHARED"),
                "measured": "VmHWM of each atlas process (its own peak RSS)",
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
