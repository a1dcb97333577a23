"""What a channel of VGG16's conv stack costs to render, the full way and the cheap way, and
whether the cheap way reaches as high.

    python benchmarks/atlas_cost.py [--channels 4] [--steps 128] [--size 128] [--threads 1]

For each of the 13 conv layers of VGG16 (the shared conv stack,
``$CONVSIGHT_SHARED/models/vgg16_hed_features.pt``; 4,224 channels in all), ``--channels``
channels spread over the layer are rendered together with the robust preset at 128 px and
128 steps on one torch thread (the atlas's worker), first in fp32 with every step ("full", the
settings before issue 29), then the cheap way the atlas now takes by default
(:func:`convsight.optvis.settings.cheap_settings`: bf16 where this processor runs it natively,
the batch stopped once its objective is flat). The two alternate layer by layer, so both see
the same machine load.

Cost: seconds per channel per layer; the whole stack's estimate is the sum over layers of
(channels x seconds per channel), in worker-hours. Quality: each render's reach (:func:`reach`:
its objective, the channel's mean activation on the image as it is, from the average of the
ImageNet sample photos of ``$CONVSIGHT_DATA`` towards their highest, 1 being as high as the
best photo), the median per layer. The full renders' traces also say where the stop rule would
have ended them. Coarse steps (``coarse_steps=0.5``) were measured by this script at 70af271
as its cheap way and lowered the reach (benchmarks/results/atlas_cost_coarse.json).
Writes benchmarks/results/atlas_cost.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import shared_dir, write_result

from convsight.data.images import ImageStream, image_files
from convsight.layers import capture
from convsight.models import Model, load_model
from convsight.optvis.callbacks import FLAT_RISE, is_flat
from convsight.optvis.render import render_channels
from convsight.optvis.settings import (
    CHEAP_CHANNELS,
    RenderSettings,
    cheap_settings,
    settings_for,
)
from convsight.runtime import bf16_is_fast

CONV_LAYERS = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
STOP_WINDOW = CHEAP_CHANNELS["stop_when_flat"]  # the cheap way's stop rule, weighed on traces


def spread(count: int, channels: int) -> list[int]:
    """``count`` channel indices spread evenly over ``channels``."""
    return sorted({(2 * i + 1) * channels // (2 * count) for i in range(count)})


@torch.no_grad()
def natural_stats(model: Model, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per conv layer, each channel's (highest, average) mean activation over the photos in
    ``folder``."""
    means: dict[str, list[torch.Tensor]] = {name: [] for name in CONV_LAYERS}
    for chunk in ImageStream(image_files(folder), model.card, 8):
        with capture(model.module, CONV_LAYERS) as outputs:
            model.module(model.normalize(chunk.pixels))
        for name in CONV_LAYERS:
            means[name].append(outputs[name].float().mean((2, 3)))
    return {n: (torch.cat(m).max(0).values, torch.cat(m).mean(0)) for n, m in means.items()}


def reach(value: float, top: float, average: float) -> float:
    """How far a render's objective goes from the photos' average towards their top, as a
    multiple of that distance (1: as high as the best photo; a channel's mean activation
    before its ReLU can be negative on every photo, so the ratio to the top alone is not
    defined)."""
    return (value - average) / max(top - average, 1e-6)


def stop_step(trace: torch.Tensor) -> int:
    """The steps a render with ``trace`` would have taken under the cheap way's stop rule
    (:func:`convsight.optvis.callbacks.is_flat`; the trace's length when it never stops)."""
    flat = (s for s in range(trace.shape[0]) if is_flat(trace, s, STOP_WINDOW))
    return next(flat, trace.shape[0] - 1) + 1


def measure(model: Model, layer: str, channels: list[int], settings: RenderSettings) -> dict:
    """One batch render of ``channels``: seconds per channel, objectives, its stop step."""
    began = time.perf_counter()
    result = render_channels(model, layer, channels, settings=settings)
    seconds = time.perf_counter() - began
    assert result.trace is not None
    return {
        "seconds_per_channel": seconds / len(channels),
        "values": [float(v) for v in result.values],
        "stop_step": stop_step(result.trace),
        "note": result.description,
    }


def layer_row(
    model: Model,
    layer: str,
    count: int,
    variants: dict[str, RenderSettings],
    natural: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """Every variant on ``count`` channels of ``layer``, with their reach."""
    top, average = natural
    channels = spread(count, len(top))
    row: dict[str, Any] = {"layer": layer, "channels_in_layer": len(top), "channels": channels}
    for name, settings in variants.items():
        found = measure(model, layer, channels, settings)
        values = zip(found["values"], channels, strict=True)
        found["reach"] = [reach(v, float(top[c]), float(average[c])) for v, c in values]
        found["median_reach"] = statistics.median(found["reach"])
        row[name] = found
    row["speedup"] = row["full"]["seconds_per_channel"] / row["cheap"]["seconds_per_channel"]
    return row


def summary(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """The whole stack's estimate per variant, the speed-up, reach and early stopping."""
    out: dict[str, Any] = {}
    for name in ("full", "cheap"):
        seconds = sum(r["channels_in_layer"] * r[name]["seconds_per_channel"] for r in rows)
        out[name] = {
            "stack_seconds_one_worker": seconds,
            "stack_worker_hours": seconds / 3600,
            "median_reach": statistics.median(x for r in rows for x in r[name]["reach"]),
        }
    out["speedup"] = (
        out["full"]["stack_seconds_one_worker"] / out["cheap"]["stack_seconds_one_worker"]
    )
    stops = [r["full"]["stop_step"] for r in rows]
    out["early_stop_full"] = {
        "rule": f"every row rose by < {FLAT_RISE:.0%} over the last {STOP_WINDOW} steps",
        "stop_steps": stops,
        "share_of_steps_saved": 1 - sum(stops) / (steps * len(stops)),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=4, help="Channels rendered per layer.")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's).")
    parser.add_argument("--layers", default=",".join(CONV_LAYERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = shared_dir()
    model = load_model("vgg16", weights=shared / "models" / "vgg16_hed_features.pt")
    data = Path(os.environ.get("CONVSIGHT_DATA", shared / "data")) / "imagenet-samples"
    natural = natural_stats(model, data)
    full = settings_for("robust", steps=args.steps, size=args.size)
    native = bf16_is_fast(model.device)
    cheap, cheap_note = cheap_settings(full, native)
    rows = []
    for layer in args.layers.split(","):
        rows.append(
            layer_row(model, layer, args.channels, {"full": full, "cheap": cheap}, natural[layer])
        )
        print(layer, f"{rows[-1]['speedup']:.2f}x", flush=True)
    write_result(
        "atlas_cost",
        {
            "what": "seconds per channel of VGG16's conv layers rendered the full and the "
            "cheap way, one torch thread, and each render's reach",
            "settings": {
                "model": "vgg16 (models/vgg16_hed_features.pt)",
                "full": full.to_dict(),
                "cheap": cheap.to_dict(),
                "cheap_not_applied": cheap_note,
                "bf16_native": native,
                "channels_per_layer": args.channels,
                "natural_images": str(data.name),
                "threads": args.threads,
            },
            "rows": rows,
            "summary": summary(rows, args.steps),
        },
    )


if __name__ == "__main__":
    main()
