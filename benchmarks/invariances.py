"""Invariances of a deep VGG16 channel: time and peak memory of the Hessian eigen-directions.

    python benchmarks/invariances.py [--layer features.28] [--channel 0] [--size 128] [--k 8]
        [--softplus 10]

The optimum of one channel of VGG16 ``features.28`` (the HED edge detector's ImageNet-VGG16
conv stack, ``$CONVSIGHT_SHARED/models/vgg16_hed_features.pt``) is rendered with the robust
preset at ``--size`` pixels (``--steps`` steps), optionally moved ``--ascend`` steps up its
sphere, then the k invariances and k most selective directions on the response's level set
within the sphere of its norm are found by Lanczos (scipy ``eigsh``) on finite-difference
Hessian-vector products (``--h``; ``--smooth SIGMA --samples N`` for the smoothed Hessian;
``--softplus BETA`` for the exact Hessian of the softplus surrogate, double backward).
No other library computes this, so there is no side-by-side timing; the check of the result is
its own (``check`` in the JSON): how far the numerical operator is from a symmetric linear map
and each direction's eigen-residual (3 + 2k more products, included in the time).

Memory: the peak resident set size of the process in each phase (load, render, the
eigen-directions): Linux's VmHWM, reset between phases through /proc/self/clear_refs; where that
is refused, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak since start), and the JSON
says which. It is the whole process (torch's CPU allocator, numpy, Python), not torch alone.
On CUDA, ``torch.cuda.max_memory_allocated`` of the eigen-direction phase as well.
Writes benchmarks/results/invariances.json (or into $CONVSIGHT_BENCH_RESULTS for a trial).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from common import shared_dir, write_result

from convsight.analysis.invariances import HessianScale, channel_response, invariances
from convsight.analysis.surrogate import softplus_surrogate
from convsight.models import load_model
from convsight.optvis import render_channels
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.invariances import ascend_on_sphere


def peak_rss_mib() -> float:
    """The process's peak resident set size, MiB: since the last :func:`reset_peak` where Linux
    allows it (VmHWM), else since the start (ru_maxrss, KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: "5" into /proc/self/clear_refs); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", default="features.28")
    parser.add_argument("--channel", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=128, help="render steps (robust preset)")
    parser.add_argument("--h", type=float, default=0.01)
    parser.add_argument("--smooth", type=float, default=0.0, help="sigma (0: off)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument(
        "--softplus", type=float, default=0.0, help="beta of the softplus surrogate (0: off)"
    )
    parser.add_argument("--ascend", type=int, default=0, help="steps up the sphere first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    weights = shared_dir() / "models" / "vgg16_hed_features.pt"
    model = load_model("vgg16", weights=weights).to(device)
    rss_loaded = peak_rss_mib()
    windows = reset_peak()
    scale = HessianScale(args.h, args.smooth, args.samples, args.softplus)
    f = channel_response(model, args.layer, args.channel, args.size)  # checks layer, channel
    if args.softplus:  # the Hessian of the surrogate, exact
        surrogate, _ = softplus_surrogate(model, args.softplus)
        f = channel_response(surrogate, args.layer, args.channel, args.size)
    start = time.perf_counter()
    rendered = render_channels(
        model, args.layer, [args.channel], steps=args.steps, size=args.size, seed=args.seed
    )
    render_seconds = time.perf_counter() - start
    rss_rendered = peak_rss_mib()
    windows = windows and reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(f"rendered in {render_seconds:.1f} s; finding {args.k} + {args.k} directions", flush=True)
    start = time.perf_counter()
    point, ascent = ascend_on_sphere(f, rendered.images[0].to(device), args.ascend)
    ascent["seconds"] = time.perf_counter() - start
    found = invariances(f, point, args.k, scale, seed=args.seed, level_set=True)  # as the command
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    rss_found = peak_rss_mib()
    print(
        f"{found.products} Hessian-vector products in {found.seconds:.1f} s "
        f"({found.seconds / max(found.products, 1):.3f} s each); peak RSS {rss_found:.0f} MiB",
        flush=True,
    )
    result = {
        "settings": {
            "model": "vgg16 (vgg16_hed_features.pt)",
            "layer": args.layer,
            "channel": args.channel,
            "size": args.size,
            "k": args.k,
            "render_steps": args.steps,
            "render_preset": "robust",
            "ascend": args.ascend,
            "seed": args.seed,
            "device": str(device),
            **scale.to_dict(),
        },
        "render_seconds": render_seconds,
        "ascent": ascent,
        "render_value": float(rendered.values[0]),
        "invariances_seconds": found.seconds,
        "seconds_per_product": found.seconds / max(found.products, 1),
        **{key: value for key, value in found.summary().items() if key != "scale"},
        "memory": {
            "measure": "peak resident set size of the process (VmHWM) of each phase, MiB"
            if windows
            else "peak resident set size of the process since start (ru_maxrss), MiB",
            "load_mib": rss_loaded,
            "render_mib": rss_rendered,
            "invariances_mib": rss_found,
            "cuda_peak_allocated_invariances_mib": gpu_peak,
        },
    }
    write_result("invariances", result)


if __name__ == "__main__":
    main()
