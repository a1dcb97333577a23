"""Time to build the atlas of VGG16 features.0-features.5 (every channel, robust preset,
128x128, 128 steps) with the top-9 dataset examples from the ImageNet sample photos.

    python benchmarks/atlas.py [--layers features.0,...] [--steps 128] [--size 128]

Writes benchmarks/results/atlas.json: total time, time per channel, per layer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import shared_dir, write_result

from convsight.studies.atlas import build_atlas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default=",".join(f"features.{i}" for i in range(6)))
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    shared = shared_dir()
    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "atlas"
        start = time.perf_counter()
        summary = build_atlas(
            "vgg16",
            layers,
            out,
            weights=shared / "models" / "vgg16_hed_features.pt",
            dataset=shared / "data" / "imagenet-samples",
            top_k=9,
            presets=["robust"],
            steps=args.steps,
            size=args.size,
            batch=args.batch,
            show_progress=False,
        )
        wall = time.perf_counter() - start
        files = sum(1 for p in out.rglob("*") if p.is_file())
        pages = sum(1 for _ in out.rglob("*.html"))
        index = json.loads((out / "atlas.json").read_text())
    write_result(
        "atlas",
        {
            "benchmark": "convsight atlas of VGG16 (HED conv stack) layers, robust preset",
            "layers": layers,
            "channels": summary["channels"],
            "steps": args.steps,
            "size": args.size,
            "batch": args.batch,
            "dataset_images": summary["dataset_size"],
            "top_k": 9,
            "wall_seconds": wall,
            "render_and_pages_seconds": summary["seconds_this_run"],
            "seconds_per_channel": wall / summary["channels"],
            "files": files,
            "pages": pages,
            "dead_per_layer": {row["name"]: len(row["dead"]) for row in index["layers"]},
        },
    )


if __name__ == "__main__":
    main()
