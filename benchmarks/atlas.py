"""Time to build the atlas of VGG16 features.0-features.5 (every channel, robust preset,
128x128, 128 steps) with the top-9 dataset examples from the ImageNet sample photos.

    python benchmarks/atlas.py [--layers features.0,...] [--steps 128] [--size 128]

Writes benchmarks/results/atlas.json: total time, time per channel, per layer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import shared_dir, write_result

from convsight.models import load_model
from convsight.studies.atlas import AtlasRequest, build_atlas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default=",".join(f"features.{i}" for i in range(6)))
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    shared = shared_dir()
    layers = args.layers.split(",")
    weights = shared / "models" / "vgg16_hed_features.pt"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "atlas"
        began = time.perf_counter()
        # One layer at a time into the same site (the atlas resumes), results after each, so
        # a run stopped midway still reports the layers it finished.
        for i in range(len(layers)):
            start = time.perf_counter()
            request = AtlasRequest(
                layers[: i + 1], out, dataset=shared / "data" / "imagenet-samples", top_k=9,
                presets=["robust"], steps=args.steps, size=args.size, batch=args.batch,
                show_progress=False, weights=weights, model_spec="vgg16",
            )  # fmt: skip
            summary = build_atlas(load_model("vgg16", weights), request).to_json()
            seconds = time.perf_counter() - start
            channels = summary["rendered_this_run"]
            rows.append(
                {
                    "layer": layers[i],
                    "channels": channels,
                    "seconds": seconds,
                    "seconds_per_channel": seconds / max(channels, 1),
                }
            )
            print(rows[-1], flush=True)
            total = time.perf_counter() - began
            write_result(
                "atlas",
                {
                    "benchmark": "convsight atlas of VGG16 (HED conv stack), robust preset",
                    "layers_asked": layers,
                    "layers_done": [r["layer"] for r in rows],
                    "steps": args.steps,
                    "size": args.size,
                    "batch": args.batch,
                    "dataset_images": summary["dataset_size"],
                    "top_k": 9,
                    "per_layer": rows,
                    "channels": sum(r["channels"] for r in rows),
                    "wall_seconds": total,
                    "seconds_per_channel": total / max(sum(r["channels"] for r in rows), 1),
                    "pages": sum(1 for _ in out.rglob("*.html")),
                },
            )


if __name__ == "__main__":
    main()
