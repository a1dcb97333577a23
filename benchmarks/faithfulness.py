"""How faithful is each map? Deletion / insertion AUC, the randomization check, and quantus.

    flock /tmp/convsight-heavy.lock python benchmarks/faithfulness.py [--step 1792]

On the 104 sample photos (../shared/data/imagenet-samples) with MobileNet v2 (../shared/models),
every method's map for the predicted class goes through the RISE deletion (to the mean colour)
and insertion (from a blurred copy) curves, ``--step`` pixels per step; the AUCs are set beside
the figures the RISE paper published for Grad-CAM (other models, other images: a sanity
reference, not a reproduction). The model-randomization check runs on the first few photos.
Then convsight's deletion is timed against quantus' PixelFlipping (the same protocol: pixels in
decreasing attribution replaced by black, ``step`` pixels per step, softmax probability of the
target) on the same photos and maps. Writes benchmarks/results/faithfulness.json and two plots.
Not a test: about 20-25 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch
from common import earlier_provenance, results_dir, shared_dir, write_result
from torch import nn

from convsight.attribution import GradCAM, method_class
from convsight.data import load_image_tensor
from convsight.data.imagenet import imagenet_samples
from convsight.engines import inference_module
from convsight.metrics import deletion, insertion
from convsight.models import load_model
from convsight.report import write_figure
from convsight.report.overlays import faithfulness_curves, sanity_plot
from convsight.studies.attribution import evaluate_methods

# RISE (Petsiuk et al., BMVC 2018, arXiv:1806.07421), Table 1: ImageNet validation images,
# ResNet50 and VGG16, 224 pixels per step, deletion to zero (after normalization). Only RISE's
# ResNet50 insertion (0.7267) could be checked on this offline machine (the paperswithcode
# listing of the paper); the other figures are as recalled, not checked against the paper.
RISE_PUBLISHED = {
    "checked": {"ResNet50 RISE insertion": 0.7267},
    "ResNet50": {
        "Grad-CAM": {"deletion": 0.1232, "insertion": 0.6766},
        "Sliding window": {"deletion": 0.1421, "insertion": 0.5246},
        "LIME": {"deletion": 0.1217, "insertion": 0.6940},
        "RISE": {"deletion": 0.1076, "insertion": 0.7267},
    },
    "VGG16": {
        "Grad-CAM": {"deletion": 0.1087, "insertion": 0.6149},
        "Sliding window": {"deletion": 0.1158, "insertion": 0.5636},
        "LIME": {"deletion": 0.1014, "insertion": 0.6167},
        "RISE": {"deletion": 0.0980, "insertion": 0.7325},
    },
}
METHODS = (
    "saliency",
    "ixg",
    "smoothgrad",
    "ig",
    "guided",
    "deconvnet",
    "gradcam",
    "gradcam++",
    "scorecam",
    "occlusion",
    "lrp",
)
EXPENSIVE = ("scorecam", "occlusion")


class Normalized(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.net = model.module
        self.card = model.card

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(self.card.normalize(p))


def quantus_comparison(model, x, targets, heat, values: int) -> dict[str, Any]:
    """convsight's deletion vs quantus PixelFlipping: same images, maps, baseline, steps.

    quantus flips ``values`` colour values per step and insists that ``values`` divides
    H x W (50176 = 2^10 x 7^2), so a whole number of pixels (3 values each) per step is not
    possible; convsight takes ``round(values / 3)`` pixels per step, which gives (almost) the
    same number of steps, i.e. the same number of forward passes per curve.
    """
    import quantus

    n = x.shape[0]
    step = round(values / x.shape[1])
    metric = quantus.PixelFlipping(
        features_in_step=values,
        perturb_baseline="black",
        disable_warnings=True,
        display_progressbar=False,
    )
    start = time.perf_counter()
    theirs = metric(
        model=Normalized(model).eval(),
        x_batch=x.numpy(),
        y_batch=np.array(targets),
        a_batch=heat[:, None].numpy(),
        channel_first=True,
        softmax=True,
        device="cpu",
        batch_size=n,
    )
    their_s = time.perf_counter() - start
    theirs = torch.tensor(np.array(theirs), dtype=torch.float32)
    # The floor of any implementation that runs the same curve: quantus' forward passes alone
    # (one batch of n images per step), on the eager module and on convsight's frozen copy.
    floors = {}
    for engine in ("eager", "frozen"):
        net = inference_module(model, x[:1]) if engine == "frozen" else model.module
        with torch.inference_mode():
            net(model.normalize(x).contiguous(memory_format=torch.channels_last))  # warm up
            start = time.perf_counter()
            for _ in range(theirs.shape[1]):
                net(model.normalize(x).contiguous(memory_format=torch.channels_last))
            floors[engine] = time.perf_counter() - start
    row: dict[str, Any] = {
        "images": n,
        "quantus_features_in_step": values,
        "quantus_points_per_curve": int(theirs.shape[1]),
        "convsight_step_pixels": step,
        "quantus_seconds": round(their_s, 2),
        "quantus_seconds_per_image": round(their_s / n, 3),
        "forward_passes_only_seconds": {k: round(v, 2) for k, v in floors.items()},
        "quantus_over_forward_passes_only": {k: round(their_s / v, 2) for k, v in floors.items()},
    }
    for engine in ("eager", "frozen"):
        start = time.perf_counter()
        ours = deletion(model, x, heat, targets, step=step, baseline=0.0, engine=engine)
        our_s = time.perf_counter() - start
        # quantus' curve starts after the first step; ours starts at the unchanged image
        m = min(theirs.shape[1], ours.scores.shape[1] - 1)
        diff = (ours.scores[:, 1 : m + 1] - theirs[:, :m]).abs()
        row[engine] = {
            "convsight_points_per_curve": int(ours.scores.shape[1]),
            "convsight_seconds": round(our_s, 2),
            "convsight_seconds_per_image": round(our_s / n, 3),
            "speedup": round(their_s / our_s, 2),
            "curve_max_abs_diff": round(float(diff.max()), 5),
            "curve_mean_abs_diff": round(float(diff.mean()), 6),
        }
    print("quantus", row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=int, default=1792, help="pixels per step (8 rows)")
    parser.add_argument("--images", type=int, default=104)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--expensive-images", type=int, default=104, help="Score-CAM, occlusion")
    parser.add_argument("--sanity-images", type=int, default=4)
    parser.add_argument("--sanity-stages", type=int, default=6)
    parser.add_argument("--quantus-images", type=int, default=16)
    parser.add_argument(
        "--quantus-values", default="1792,784", help="quantus features_in_step (divides H*W)"
    )
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--occlusion-window", type=int, default=32)
    parser.add_argument("--occlusion-stride", type=int, default=16)
    parser.add_argument("--engine", default="frozen")
    parser.add_argument(
        "--merge", action="store_true", help="add to results/faithfulness.json (same settings)"
    )
    parser.add_argument("--skip-quantus", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shared = shared_dir()
    model = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    samples = imagenet_samples(shared / "data" / "imagenet-samples")[: args.images]
    x = torch.cat([load_image_tensor(path, model.card) for path, _ in samples])
    with torch.no_grad():
        predicted = model.module(model.normalize(x)).argmax(1).tolist()
    accuracy = float(
        np.mean([p == label for p, (_, label) in zip(predicted, samples, strict=True)])
    )
    settings = {
        "model": "mobilenet_v2 (../shared/models, stock torchvision padding)",
        "images": len(samples),
        "top1_accuracy": accuracy,
        "targets": "the predicted class (as RISE)",
        "step_pixels": args.step,
        "points_per_curve": -(-224 * 224 // args.step) + 1,
        "deletion_baseline": "the model's mean colour (zero after normalization, as RISE's code)",
        "insertion_start": "Gaussian blur, kernel 11, sigma 5 (RISE)",
        "ig_steps": args.ig_steps,
        "smoothgrad_samples": 16,
        "occlusion": f"window {args.occlusion_window}, stride {args.occlusion_stride}",
        "cam_layer": "features.18.2 (after the last conv)",
        "expensive_methods_images": args.expensive_images,
        "sanity": f"first {args.sanity_images} photos (2 for Score-CAM/occlusion), "
        f"{args.sanity_stages} stages of the top-down cascade over all layers with parameters",
        "engine": args.engine,
    }
    methods: dict[str, Any] = {}
    results: dict[str, Any] = {"settings": settings, "methods": methods}
    if args.merge and (results_dir() / "faithfulness.json").is_file():
        import json

        previous = json.loads((results_dir() / "faithfulness.json").read_text())
        methods.update(previous.get("methods", {}))
        if "quantus" in previous:
            results["quantus"] = previous["quantus"]
        settings["merged_runs"] = previous.get("settings", {}).get("merged_runs", 1) + 1
        results["earlier_provenance"] = earlier_provenance(results_dir() / "faithfulness.json")

    def save() -> None:
        write_result(
            "faithfulness",
            {
                "benchmark": "deletion / insertion AUC, randomization check, quantus timing",
                **results,
                "rise_published": RISE_PUBLISHED,
                "rise_note": "published on ImageNet validation images with ResNet50 / VGG16 at "
                "224 px per step; here MobileNet v2 on 104 sample photos at a coarser step: "
                "models and images differ, so only the order of magnitude is comparable; only "
                "RISE's ResNet50 insertion (0.7267) was checked here, the rest is unverified",
                "load_average": os.getloadavg(),
            },
        )

    total = time.perf_counter()
    # a random map: the floor any method should beat
    if "random" not in methods:
        g = torch.Generator().manual_seed(0)
        noise = torch.rand(x.shape[0], 224, 224, generator=g)
        began = time.perf_counter()
        dele = deletion(model, x, noise, predicted, step=args.step, engine=args.engine).auc
        ins = insertion(model, x, noise, predicted, step=args.step, engine=args.engine).auc
        methods["random"] = {
            "deletion_auc": float(dele.mean()),
            "insertion_auc": float(ins.mean()),
            "images": x.shape[0],
            "seconds": {"curves": time.perf_counter() - began},
        }
        print("random", methods["random"], flush=True)
    save()

    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cls = method_class(name)
        k = args.expensive_images if name in EXPENSIVE else x.shape[0]
        began = time.perf_counter()
        result = evaluate_methods(
            model,
            x[:k],
            predicted[:k],
            [cls],
            ("deletion", "insertion", "sanity"),
            step=args.step,
            batch_size=16,
            engine=args.engine,
            sanity_images=min(2, args.sanity_images) if name in EXPENSIVE else args.sanity_images,
            sanity_stages=args.sanity_stages,
            ig_steps=args.ig_steps,
            smoothgrad_samples=16,
            occlusion_window=args.occlusion_window,
            occlusion_stride=args.occlusion_stride,
        )["methods"][cls.name]
        entry = {
            "title": cls.title,
            "images": k,
            "deletion_auc": result["deletion_auc"],
            "deletion_auc_std": result["deletion_auc_std"],
            "insertion_auc": result["insertion_auc"],
            "insertion_auc_std": result["insertion_auc_std"],
            "deletion_curve": result["deletion_curve"],
            "insertion_curve": result["insertion_curve"],
            "sanity": result["sanity"],
            "seconds": {**result["seconds"], "total": time.perf_counter() - began},
        }
        methods[cls.name] = entry
        stages = [round(s["spearman_mean"], 3) for s in entry["sanity"]["stages"]]
        print(
            f"{cls.name}: deletion {entry['deletion_auc']:.4f} insertion "
            f"{entry['insertion_auc']:.4f} sanity {stages} ({entry['seconds']['total']:.0f} s)",
            flush=True,
        )
        save()

    quantus_rows = []
    q = min(args.quantus_images, x.shape[0])
    heat = GradCAM(model).heatmap(x[:q], predicted[:q])
    values_list = [] if args.skip_quantus else args.quantus_values.split(",")
    for values in [int(s) for s in values_list if s.strip()]:
        quantus_rows.append(quantus_comparison(model, x[:q], predicted[:q], heat, values))
    if quantus_rows:
        results["quantus"] = {
            "metric": "quantus.PixelFlipping (deletion) vs convsight.metrics.deletion",
            "maps": "Grad-CAM at features.18.2, upsampled",
            "baseline": "black (0) in both",
            "steps": "quantus flips features_in_step colour values per step (it must divide H*W, "
            "so not a multiple of 3); convsight flips round(features_in_step / 3) pixels: the same "
            "number of forward passes; curves agree up to that rounding",
            "rows": quantus_rows,
            "insertion": "quantus has no blurred-start insertion metric; not compared",
        }
    results["total_seconds"] = time.perf_counter() - total
    save()

    named = {k: v for k, v in methods.items() if k != "random"}
    curves = {
        kind: {
            name: (
                np.array(entry[f"{kind}_curve"]["fraction"]),
                np.array(entry[f"{kind}_curve"]["mean_probability"]),
            )
            for name, entry in named.items()
        }
        for kind in ("deletion", "insertion")
    }
    title = f"MobileNet v2, {x.shape[0]} sample photos, {args.step} px per step"
    write_figure(
        results_dir() / "faithfulness_curves.png", faithfulness_curves(curves, title), dpi=80
    )
    lines = {
        name: (
            [s["randomized_down_to"] for s in entry["sanity"]["stages"]],
            [s["spearman_mean"] for s in entry["sanity"]["stages"]],
        )
        for name, entry in named.items()
    }
    write_figure(
        results_dir() / "faithfulness_sanity.png",
        sanity_plot(lines, "MobileNet v2: cascading randomization from the logits down"),
        dpi=80,
    )
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
