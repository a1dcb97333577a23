"""Channel rendering speed: convsight vs torch-lucent on VGG16, the same job in one run.

    make bench-deps && python benchmarks/render.py [--channels 16] [--lucent-channels 16]

16 channels of VGG16 ``features.2`` and ``features.28`` at 224x224, 64 steps, Lucent's
default parameterization (Fourier + decorrelated colour, sd 0.01), default transforms (pad 12,
jitter 8, scale 0.9-1.1, rotate +-10, jitter 4) and Adam 0.05 on both sides. Lucent renders one
channel per ``render_vis`` call, as its users do, on a VGG16 whose parameters require grad (a
model as torchvision builds it); a one-channel row with frozen parameters is also timed.
convsight renders all channels in one call (``render_channels``, preset ``robust``: truncated
at the layer, channels-last, and for a conv target only each row's own channel of it); for
``features.2`` it is also timed computing the whole layer (``slice_channels=False``). The step
FLOP/s is measured for the whole-layer step (the sliced step does far fewer FLOPs).
``--lucent-channels`` < 16 times Lucent on fewer channels and scales its time to 16 (Lucent
renders channels independently, so its time is linear in the channel count); the JSON says so.

Also measured: this machine's fp32 matmul FLOP/s and the FLOP/s one convsight step achieves
(FLOPs counted by torch.utils.flop_counter), and the objective each side reaches (mean channel
activation of the final image, evaluated the same way for both).
Writes benchmarks/results/render.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch
from common import results_dir, shared_dir, write_result
from torch.utils.flop_counter import FlopCounterMode

from convsight.layers import forward_to
from convsight.models import load_model
from convsight.optvis import render_channels
from convsight.optvis.forward import Forward
from convsight.optvis.objectives import Context, channel
from convsight.optvis.param import FourierImage
from convsight.optvis.recipes import make_transforms, row_generators
from convsight.optvis.settings import settings_for
from convsight.optvis.transforms import Compose, RowRandom

LAYERS = ("features.2", "features.28")


def matmul_flops(size: int = 4096, reps: int = 5) -> float:
    """Best fp32 matmul FLOP/s of a few sizes."""
    best = 0.0
    for n in (2048, size):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def step_flops(model, layer: str, slice_channels: bool, rows: int = 1) -> tuple[float, float]:
    """FLOPs of one convsight step on ``rows`` rows (channels 0..rows-1) and its time (best
    of 3)."""
    settings = settings_for("robust", steps=1, slice_channels=slice_channels)
    generators = row_generators(list(range(rows)))
    param = FourierImage.normal(model, generators, (224, 224))
    transforms = Compose(make_transforms(settings))
    objective = channel(layer, list(range(5, 5 + rows)) if rows > 1 else [5])
    forward = Forward(model, objective, slice_channels)
    model.module.to(memory_format=torch.channels_last)

    def step():
        pixels = param.pixels()
        x = model.normalize(transforms(pixels, RowRandom(generators)))
        acts = forward(x.contiguous(memory_format=torch.channels_last))
        value = objective(Context(acts, pixels, x, 1, sliced=forward.sliced))
        (-value.sum()).backward()

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    finally:
        model.module.to(memory_format=torch.contiguous_format)
    return flops, min(times)


@torch.no_grad()
def channel_values(model, layer: str, images: torch.Tensor, channels: list[int]) -> list[float]:
    """Mean activation of each row's channel for pixel images (224x224, no transforms)."""
    out = []
    for image, c in zip(images, channels, strict=True):
        acts = forward_to(model.module, model.normalize(image[None]), [layer])[layer]
        out.append(float(acts[0, c].mean()))
    return out


def lucent_render(module, layer: str, channel_index: int, steps: int) -> np.ndarray:
    from lucent.optvis import objectives, param, render

    images = render.render_vis(
        module,
        objectives.channel(layer.replace(".", "_"), channel_index),
        param_f=lambda: param.image(224),
        thresholds=(steps,),
        show_image=False,
        progress=False,
    )
    for m in module.modules():  # render_vis leaves a forward hook on every module
        m._forward_hooks.clear()
    return images[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--lucent-channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="only the matmul and step FLOP/s (16 rows, as rendered), added to render.json",
    )
    parser.add_argument(
        "--precision-only",
        action="store_true",
        help="only convsight fp32 vs bf16 (autocast): time and objective reached, added to "
        "render.json",
    )
    parser.add_argument(
        "--layers",
        default=",".join(LAYERS),
        help="with --precision-only: the layers to time (default: both)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    weights = shared_dir() / "models" / "vgg16_hed_features.pt"
    model = load_model("vgg16", weights=weights)
    if args.flops_only:
        flops_only(model, args.channels)
        return
    if args.precision_only:
        layers = [name.strip() for name in args.layers.split(",") if name.strip()]
        precision_only(model, args.channels, args.steps, args.seed, layers)
        return
    channels = list(range(args.channels))
    peak = matmul_flops()
    print(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for layer in LAYERS:
        # torch-lucent: one channel per call, on a model whose parameters require grad.
        lucent_module = copy.deepcopy(model.module)
        for p in lucent_module.parameters():
            p.requires_grad_(True)
        lucent_channels = channels[: args.lucent_channels]
        lucent_images, start = [], time.perf_counter()
        for c in lucent_channels:
            lucent_images.append(lucent_render(lucent_module, layer, c, args.steps))
        lucent_seconds = time.perf_counter() - start
        lucent_total = lucent_seconds * len(channels) / len(lucent_channels)
        print(f"{layer} lucent: {lucent_seconds:.1f} s for {len(lucent_channels)}", flush=True)
        frozen = copy.deepcopy(model.module)
        start = time.perf_counter()
        lucent_render(frozen, layer, channels[0], args.steps)
        lucent_frozen_one = time.perf_counter() - start
        # convsight: every channel in one call.
        start = time.perf_counter()
        result = render_channels(
            model, layer, channels, preset="robust", steps=args.steps, seed=args.seed
        )
        ours = time.perf_counter() - start
        print(f"{layer} convsight: {ours:.1f} s for {len(channels)}", flush=True)
        full_layer = None
        if layer == "features.2":  # the same without computing only the needed channel
            start = time.perf_counter()
            render_channels(
                model, layer, channels, steps=args.steps, seed=args.seed, slice_channels=False
            )
            full_layer = time.perf_counter() - start
            print(f"{layer} convsight, whole layer: {full_layer:.1f} s", flush=True)
        flops, step_seconds = step_flops(model, layer, False)
        sliced_flops, sliced_seconds = step_flops(model, layer, True)
        lucent_pixels = torch.from_numpy(np.stack(lucent_images)).permute(0, 3, 1, 2).float()
        ours_values = channel_values(model, layer, result.images, channels)
        lucent_values = channel_values(model, layer, lucent_pixels, lucent_channels)
        row = {
            "layer": layer,
            "channels": len(channels),
            "steps": args.steps,
            "lucent_seconds": lucent_total,
            "lucent_seconds_per_channel": lucent_seconds / len(lucent_channels),
            "lucent_channels_timed": len(lucent_channels),
            "lucent_extrapolated": len(lucent_channels) != len(channels),
            "lucent_frozen_params_seconds_per_channel": lucent_frozen_one,
            "convsight_seconds": ours,
            "convsight_seconds_per_channel": ours / len(channels),
            "speedup": lucent_total / ours,
            "speedup_vs_lucent_frozen_params": lucent_frozen_one * len(channels) / ours,
            "convsight_whole_layer_seconds": full_layer,
            "speedup_whole_layer": lucent_total / full_layer if full_layer else None,
            "convsight_step_sliced_gflop_per_row": sliced_flops / 1e9,
            "convsight_step_sliced_seconds_per_row": sliced_seconds,
            "convsight_step_sliced_gflops": sliced_flops / sliced_seconds / 1e9,
            "convsight_step_gflop_per_row": flops / 1e9,
            "convsight_step_seconds_per_row": step_seconds,
            "convsight_step_gflops": flops / step_seconds / 1e9,
            "convsight_step_fraction_of_matmul": flops / step_seconds / peak,
            "objective_convsight_mean": float(np.mean(ours_values[: len(lucent_channels)])),
            "objective_lucent_mean": float(np.mean(lucent_values)),
            "load_average_after": os.getloadavg()[0],
            "objective_convsight": ours_values,
            "objective_lucent": lucent_values,
        }
        print({k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
        rows.append(row)
    write_result(
        "render",
        {
            "job": "VGG16 (HED features) channels at 224x224, Fourier + decorrelated colour, "
            "Lucent's default transforms, Adam 0.05",
            "matmul_gflops_fp32": peak / 1e9,
            "note": "2 shared CPU cores: other work may have run at the same time "
            "(load_average_after); Lucent and convsight alternate in one process",
            "settings": settings_for("robust", steps=args.steps).to_dict(),
            "rows": rows,
        },
    )


def add_to_render_json(key: str, result: dict) -> None:
    """Store ``result`` (with load and threads) under ``key`` of render.json, keeping its rows."""
    import json

    result["load_average_after"] = os.getloadavg()
    result["threads"] = torch.get_num_threads()
    path = results_dir() / "render.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = result
    if "machine" in data:  # the machine of the timed rows; write_result adds this run's
        data.setdefault("machine_of_rows", data.pop("machine"))
    if "provenance" in data:  # likewise; write_result also keeps it in "earlier_provenance"
        data.setdefault("provenance_of_rows", data["provenance"])
    write_result("render", data)


def precision_only(model, channels: int, steps: int, seed: int, layers=LAYERS) -> None:
    """bf16 autocast against fp32: the same render, timed, and the objective each reaches
    (mean channel activation of its final image, both evaluated in fp32)."""
    result: dict = {"channels": channels, "steps": steps, "layers": {}}
    for layer in layers:
        row: dict = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            rendered = render_channels(
                model, layer, range(channels), steps=steps, seed=seed, precision=precision
            )
            row[f"{precision}_seconds"] = time.perf_counter() - start
            values = channel_values(model, layer, rendered.images, list(range(channels)))
            row[f"objective_{precision}_images"] = values
            row[f"objective_{precision}_mean"] = float(np.mean(values))
        row["speedup_bf16"] = row["fp32_seconds"] / row["bf16_seconds"]
        row["objective_ratio_bf16_to_fp32"] = (
            row["objective_bf16_mean"] / row["objective_fp32_mean"]
        )
        result["layers"][layer] = row
        print(layer, {k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
    add_to_render_json("precision_bf16", result)


def flops_only(model, rows: int) -> None:
    """The FLOP/s target on a quiet machine: one step of the batched render against matmul."""
    peak = matmul_flops()
    result = {"matmul_gflops_fp32": peak / 1e9, "rows": rows, "layers": {}}
    for layer in LAYERS:
        for sliced in (False, True) if layer == "features.2" else (True,):
            flops, seconds = step_flops(model, layer, sliced, rows)
            name = f"{layer} {'sliced' if sliced else 'whole layer'}"
            result["layers"][name] = {
                "gflop_per_step": flops / 1e9,
                "seconds_per_step": seconds,
                "gflops": flops / seconds / 1e9,
                "fraction_of_matmul": flops / seconds / peak,
            }
            print(name, result["layers"][name], flush=True)
    add_to_render_json("step_flops_batched", result)


if __name__ == "__main__":
    main()
