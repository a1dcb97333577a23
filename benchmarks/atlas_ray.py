"""The atlas on Ray, on this machine's cores (issue 12).

1. Speed-up: the same channels of VGG16 (robust preset) rendered by 1 and by 2 Ray workers of
   one torch thread each (a local Ray instance of 1, then 2 CPUs; workers warmed first).
2. Dataset pass: images per second of the sharded pass (per-image maxima, positions and means
   over batch-aligned slices) against a plain batched forward pass to the same layer over the
   same slices on the same 2 workers (best of 2 each, alternating).
3. Whole network: the atlas of every VGG16 conv layer at a reduced setting on a local cluster
   of 2 worker nodes (1 CPU each; the head runs no tasks), one node removed when half the
   channels are recorded; timings per layer; then the plan's probe at the full setting (both
   presets, their default steps and sizes, every channel) for the estimate on N workers.

    python benchmarks/atlas_ray.py [--speedup-channels 16] [--network-channels 0-7] ...

Writes benchmarks/results/atlas_ray.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
from common import shared_dir, write_result
from ray.cluster_utils import Cluster

from convsight.analysis.dataset_examples import image_stats
from convsight.distributed import connect, shards
from convsight.layers import forward_to
from convsight.models import Model, load_model
from convsight.studies.atlas import AtlasRequest, build_atlas, dataset_images, load_dataset
from convsight.studies.atlas.inputs import check_inputs
from convsight.studies.atlas.plan import probe

CONV_LAYERS = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
QUIET = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}


def vgg16(shared: Path) -> Model:
    return load_model("vgg16", weights=shared / "models" / "vgg16_hed_features.pt")


def warm(workers: int) -> None:
    """Start every worker and import torch and convsight in it (not timed)."""

    @ray.remote(num_cpus=1)
    def ready() -> int:
        import convsight.studies.atlas  # noqa: F401

        time.sleep(1.0)  # hold the CPU so each task lands on another worker
        return torch.get_num_threads()

    ray.get([ready.remote() for _ in range(workers)])


def speedup(args: argparse.Namespace, shared: Path, model: Model) -> dict[str, Any]:
    rows = []
    for workers in (1, 2):
        ray.init(num_cpus=workers, **QUIET)
        warm(workers)
        with tempfile.TemporaryDirectory() as tmp:
            summary = build_atlas(
                model,
                AtlasRequest(
                    [args.speedup_layer],
                    Path(tmp) / "atlas",
                    channels=f"0-{args.speedup_channels - 1}",
                    presets=["robust"],
                    steps=args.speedup_steps,
                    size=args.size,
                    batch=args.speedup_batch,
                    ray="local",  # the instance started above
                    show_progress=False,
                ),
            ).to_json()
        ray.shutdown()
        rows.append(
            {
                "workers": workers,
                "threads_per_worker": 1,
                "seconds": summary["seconds_this_run"],
                "channels": summary["rendered_this_run"],
            }
        )
        print(rows[-1], flush=True)
    return {
        "layer": args.speedup_layer,
        "preset": "robust",
        "steps": args.speedup_steps,
        "size": args.size,
        "batch": args.speedup_batch,
        "runs": rows,
        "speedup_2_over_1": rows[0]["seconds"] / rows[1]["seconds"],
        "target": 1.8,
    }


def forward_only(
    model: Model, pixels: torch.Tensor, layer: str, batch_size: int, start: int, stop: int
) -> int:
    """The plain batched forward pass to ``layer`` over ``pixels[start:stop]``."""
    with torch.no_grad():
        for first in range(start, stop, batch_size):
            batch = pixels[first : min(first + batch_size, stop)]
            forward_to(model.module, model.normalize(batch), [layer])
    return stop - start


def dataset_pass(args: argparse.Namespace, shared: Path, model: Model) -> dict[str, Any]:
    folder = shared / "data" / "imagenet-samples"
    pixels, names, _ = load_dataset(model, dataset_images(folder), folder)
    pixels = pixels.repeat(args.dataset_repeat, 1, 1, 1)
    ray.init(num_cpus=2, **QUIET)
    work = connect("local")
    warm(2)
    shared_inputs = {"model": model, "pixels": pixels, "layer": args.dataset_layer}
    shared_inputs["batch_size"] = 16
    parts = shards(len(pixels), 16, 2 * work.workers)
    timings: dict[str, list[float]] = {"sharded": [], "plain": []}
    for repeat in range(3):  # the first round warms the object store and the workers
        for name, fn in (("sharded", image_stats), ("plain", forward_only)):
            start = time.perf_counter()
            list(work.map(fn, shared_inputs, parts))
            if repeat:
                timings[name].append(time.perf_counter() - start)
    work.close()
    ray.shutdown()
    best = {k: min(v) for k, v in timings.items()}
    return {
        "layer": args.dataset_layer,
        "images": len(pixels),
        "image_size": list(pixels.shape[-2:]),
        "photos": len(names),
        "repeat": args.dataset_repeat,
        "workers": 2,
        "slices": len(parts),
        "seconds": timings,
        "images_per_second": {k: len(pixels) / v for k, v in best.items()},
        "sharded_over_plain": best["plain"] / best["sharded"],
        "target": 0.8,
    }


def whole_network(args: argparse.Namespace, shared: Path, model: Model) -> dict[str, Any]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    channels = len(range(*_bounds(args.network_channels)))
    total = channels * len(CONV_LAYERS)
    removed: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "atlas"

        def remove_halfway() -> None:
            while len(list(out.glob("*/records/c*.json"))) < total // 2:
                time.sleep(0.2)
            removed["after_records"] = len(list(out.glob("*/records/c*.json")))
            removed["at"] = time.time()
            cluster.remove_node(nodes[1])

        watcher = threading.Thread(target=remove_halfway, daemon=True)
        watcher.start()
        began = time.time()
        summary = build_atlas(
            model,
            AtlasRequest(
                CONV_LAYERS,
                out,
                channels=args.network_channels,
                dataset=shared / "data" / "imagenet-samples",
                top_k=3,
                presets=["robust"],
                steps=args.network_steps,
                size=args.network_size,
                batch=args.network_batch,
                ray=cluster.address,
                show_progress=False,
            ),
        ).to_json()
        watcher.join(timeout=1)
        records = len(list(out.glob("*/records/c*.json")))
        pages = len(list(out.rglob("c*.html")))
    reduced = {
        "layers": CONV_LAYERS,
        "channels": args.network_channels,
        "preset": "robust",
        "steps": args.network_steps,
        "size": args.network_size,
        "batch": args.network_batch,
        "dataset_images": summary["dataset_size"],
        "top_k": 3,
        "node_removed_after_records": removed.get("after_records"),
        "node_removed_after_seconds": removed["at"] - began if removed else None,
        "records": records,
        "channel_pages": pages,
        "expected": total,
        "completed": records == total == summary["channels"],
        "seconds": summary["seconds_this_run"],
        "per_layer": [
            {
                "layer": r["name"],
                "seconds": r["seconds_this_run"],
                "rendered": r["rendered_this_run"],
            }
            for r in summary["layers"]
        ],
        "work_at_end": summary["work"],
    }
    print(reduced, flush=True)
    cluster.add_node(num_cpus=1)  # two workers again for the probe
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, **QUIET)
    work = connect(cluster.address)
    job = check_inputs(model, AtlasRequest(CONV_LAYERS, batch=args.probe_batch))
    plan = probe(job, job.chosen, work)
    work.close()
    ray.shutdown()
    cluster.shutdown()
    one = plan["render_seconds_one_worker"]
    full = {
        "presets": {p: s.to_dict() for p, s in job.settings.items()},
        "channels": sum(len(c) for c in job.chosen.values()),
        "probe": plan,
        "estimated_hours": {str(n): one / n / 3600 for n in (1, 2, 8, 32, 128)},
        "assumes": "perfect scaling over N one-thread workers like these; renders only "
        f"(probe of {args.probe_batch}-channel chunks, {plan['probe_steps']} steps a preset, "
        "scaled to the full steps)",
    }
    return {"reduced_run": reduced, "full_setting": full}


def _bounds(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--speedup-layer", default="features.10")
    parser.add_argument("--speedup-channels", type=int, default=16)
    parser.add_argument("--speedup-steps", type=int, default=64)
    parser.add_argument("--speedup-batch", type=int, default=2)
    parser.add_argument("--dataset-layer", default="features.28")
    parser.add_argument("--dataset-repeat", type=int, default=1)
    parser.add_argument("--network-channels", default="0-7")
    parser.add_argument("--network-steps", type=int, default=32)
    parser.add_argument("--network-size", type=int, default=64)
    parser.add_argument("--network-batch", type=int, default=2)
    parser.add_argument("--probe-batch", type=int, default=4)
    parser.add_argument("--only", default="speedup,dataset,network")
    args = parser.parse_args()
    shared = shared_dir()
    model = vgg16(shared)
    parts = args.only.split(",")
    result: dict[str, Any] = {
        "benchmark": "convsight atlas on Ray: 1 vs 2 workers, sharded dataset pass, whole VGG16",
        "model": "vgg16 (HED conv stack weights)",
        "ray": ray.__version__,
    }
    for name, fn in (("speedup", speedup), ("dataset", dataset_pass), ("network", whole_network)):
        if name in parts:
            result[name] = fn(args, shared, model)
            write_result("atlas_ray", result)


if __name__ == "__main__":
    main()
