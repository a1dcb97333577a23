"""Time to build the atlas of VGG16 features.0-features.5 (every channel, robust preset,
128x128, 128 steps) with the top-9 dataset examples from the ImageNet sample photos.

    python benchmarks/atlas.py [--layers features.0,...] [--steps 128] [--size 128]

Writes benchmarks/results/atlas.json: total time, time per channel, per layer; and per layer
the plan's estimate of the render seconds a channel (its short probe, made before each layer)
beside the render seconds the run actually spent, copied from the atlas's own atlas.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

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
                plan=True, show_progress=False, weights=weights, model_spec="vgg16",
            )  # fmt: skip
            summary = build_atlas(load_model("vgg16", weights), request).to_json()
            rows.append(layer_row(summary, layers[i], time.perf_counter() - start))
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
                    **plan_totals(rows, summary),
                },
            )


def layer_row(summary: dict[str, Any], layer: str, seconds: float) -> dict[str, Any]:
    """The row of ``layer``, built alone by the run whose ``atlas.json`` is ``summary`` in
    ``seconds`` (dataset pass, probe and pages included): its channels and seconds, and from
    the atlas's plan and actual its estimated render seconds a channel, the render seconds
    spent (as the workers measured them), a channel, their wall seconds and actual / estimate."""
    channels = summary["rendered_this_run"]
    spent = next(row for row in summary["actual"]["layers"] if row["layer"] == layer)
    return {
        "layer": layer,
        "channels": channels,
        "seconds": seconds,
        "seconds_per_channel": seconds / max(channels, 1),
        "estimated_seconds_per_channel": spent["estimated_seconds_per_channel"],
        "render_seconds": spent["render_seconds"],
        "render_seconds_per_channel": spent["seconds_per_channel"],
        "render_wall_seconds": spent["wall_seconds"],
        "ratio": spent["ratio"],
    }


def plan_totals(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The whole run's render seconds, estimated (each layer's estimate a channel times its
    channels; None if a layer had none) and spent, with their ratio and the probe's steps."""
    estimates = [row["estimated_seconds_per_channel"] for row in rows]
    spent = sum(row["render_seconds"] for row in rows)
    estimated = None
    if all(e is not None for e in estimates):
        estimated = sum(e * row["channels"] for e, row in zip(estimates, rows, strict=True))
    return {
        "probe_steps": (summary["plan"] or {}).get("probe_steps"),
        "estimated_render_seconds": estimated,
        "render_seconds": spent,
        "render_ratio": spent / estimated if estimated else None,
    }


if __name__ == "__main__":
    main()
