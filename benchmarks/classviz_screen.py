"""Screen class-visualization recipes quickly: the robust class preset with overrides.

    python benchmarks/classviz_screen.py --threads 1 --steps 128 \
        "constant 0.2: lr_schedule=constant, lr=0.2" "zoom 0.5-1.5: zoom=0.5-1.5"

Each positional argument is ``name: key=value, key=value`` (any :class:`RenderSettings`
field; ``zoom=lo-hi`` means 11 evenly spaced scales from lo to hi, ``rotate=d`` angles
-d..d). Every recipe renders the ``--ablation-classes`` classes of
benchmarks/classviz_quality.py with each of ``--seeds`` (default 2,3: seeds that the 40-class
confirmation, seeds 0 and 1, does not use) and is judged by the same independent MobileNet v1
0.5/160. One seed of 20 classes is too noisy to rank recipes (the same recipe scored 45% with
seed 0 and 70% with seed 1). Rows are appended to
benchmarks/results/classviz_screen.json (``--name``), with forward/backward passes per image
(steps x views) beside each hit rate, so recipes can be compared at equal work; ``--also 64``
judges the images at step 64 as well (one row each). Each row's ``base`` names the class
objective of the preset it overrides (the preset changed from margin to cossim, then gained
the skip gradient).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from classviz_quality import Judge, pick_classes
from common import earlier_provenance, results_dir, shared_dir, write_result

from convsight.data.imagenet import imagenet_samples
from convsight.models import load_model
from convsight.optvis import render_classes
from convsight.optvis.settings import CLASS_PRESETS


def zoom(text: str, count: int = 11) -> tuple[float, ...]:
    """'0.5-1.5' -> 11 evenly spaced scales from 0.5 to 1.5."""
    lo, hi = (float(v) for v in text.split("-"))
    return tuple(round(lo + (hi - lo) * i / (count - 1), 3) for i in range(count))


def base_name() -> str:
    """What the overrides apply to: the class preset's objective and skip gradient."""
    preset = CLASS_PRESETS["robust"]
    name = f"robust class preset, {preset['class_objective']} objective"
    if preset.get("skip_gradient", 1.0) < 1:
        name += f", skip gradient {preset['skip_gradient']:g}"
    return name


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """'name: lr=0.2, zoom=0.5-1.5' -> ('name', {'lr': 0.2, 'scales': (...)})."""
    name, _, body = text.partition(":")
    kwargs: dict[str, Any] = {}
    for item in [p.strip() for p in body.split(",") if p.strip()]:
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key == "zoom":
            kwargs["scales"] = zoom(value)
            continue
        if key == "rotate":  # rotate=30: angles -30..30 degrees
            kwargs["angles"] = tuple(range(-int(value), int(value) + 1))
            continue
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name.strip(), kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipes", nargs="+", help="'name: key=value, ...'")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument(
        "--also",
        default="",
        help="earlier step counts judged from snapshots, e.g. 64 (same images as a 64-step "
        "render when the learning rate is constant and nothing is averaged)",
    )
    parser.add_argument("--seeds", default="2,3", help="comma-separated seeds, pooled")
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--ablation-classes", type=int, default=20)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="classviz_screen")
    parser.add_argument("--images", default="", help="folder for one PNG grid per recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipes = [parse_recipe(r) for r in args.recipes]
    seeds = [int(v) for v in args.seeds.split(",")]
    shared = shared_dir()
    model = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    judge = Judge(shared / "models" / "mobilenet_v1_05_160.ts")
    samples = imagenet_samples(shared / "data" / "imagenet-samples")
    classes = pick_classes(samples, args.classes)
    which = classes[:: max(1, len(classes) // args.ablation_classes)][: args.ablation_classes]
    path = results_dir() / f"{args.name}.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"] if path.exists() else []
    earlier = earlier_provenance(path)  # the runs whose rows are appended to
    also = [int(v) for v in args.also.split(",") if v.strip()]
    for name, kwargs in recipes:
        start = time.perf_counter()
        judged: dict[int, dict[str, list]] = {}
        for seed in seeds:
            result = render_classes(
                model, which, seed=seed, steps=args.steps, size=args.size, snapshots=also, **kwargs
            )
            for steps, images in [*result.snapshots.items(), (args.steps, result.images)]:
                hits = judged.setdefault(steps, {"top1": [], "top5": [], "judge_prob": []})
                for k, v in judge.hits(images, which).items():
                    hits[k].extend(v)
            if args.images:
                from torchvision.utils import save_image

                out = Path(args.images) / f"{name.replace(' ', '_')}_seed{seed}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                save_image(result.images, out, nrow=10)
        seconds = time.perf_counter() - start
        views = result.settings["views"]
        for steps in sorted(judged):
            hits = judged[steps]
            row = {
                "recipe": name,
                "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                "steps": steps,
                "views": views,
                "passes": steps * views,
                "seeds": seeds,
                "images": len(hits["top1"]),
                "top1_rate": float(np.mean(hits["top1"])),
                "top5_rate": float(np.mean(hits["top5"])),
                "judge_prob_mean": float(np.mean(hits["judge_prob"])),
                "top1": hits["top1"],
                "seconds": seconds,
                "base": base_name(),
            }
            rows.append(row)
            print(
                f"{name:38s} {steps:4d} steps x {views} views x {len(seeds)} seeds:"
                f" top-1 {row['top1_rate']:.0%}  top-5 {row['top5_rate']:.0%}"
                f"  p {row['judge_prob_mean']:.2f}  ({seconds:.0f} s)",
                flush=True,
            )
        write_result(
            args.name,
            {
                "classes": which,
                "size": args.size,
                "rows": rows,
                **({"earlier_provenance": earlier} if earlier else {}),
            },
        )


if __name__ == "__main__":
    main()
