"""Which preset's pictures follow natural paths? Trust measures of `paper` and `robust` renders.

    python benchmarks/path_similarity.py [--channels 4] [--classes 5] [--robust-steps N]
        [--class-steps N] [--size 128] [--class-size 160] [--threads 1]

Renders, with each preset, the first ``--channels`` channels of VGG16 ``features.2``,
``features.12`` and ``features.28`` (the HED edge detector's ImageNet-VGG16 conv stack,
``$CONVSIGHT_SHARED/models/vgg16_hed_features.pt``; its card's input size set to ``--size``,
so renders and photos meet at the same size) and the class models of the first ``--classes``
of the paper's classes on MobileNet v2 (``mobilenet_v2_imagenet.pt``, input ``--class-size``),
through ``convsight maximize`` / ``classviz`` with ``--dataset`` the 104 sample photos
(``data/imagenet-samples``), and records each render's trust (:mod:`convsight.analysis.trust`):
reach (the render's objective against its top 9 photos') and rank among the photos, and path
similarity (Spearman correlation of channel-mean activations below the unit with its top photos
and with 32 random photos; flagged "off-path" when closer to random photos over the last third
of the layers). Class models are also judged by the independent MobileNet v1 0.5/160
(TorchScript, ``mobilenet_v1_05_160.ts``): top-1 and top-5. The presets are the product's
(``paper``: 20 steps; ``robust``: its 256, or ``--robust-steps`` / ``--class-steps`` for a
trial; both at the sizes above). About 12 minutes on one core. No other library measures this,
so there is no side-by-side timing. Writes benchmarks/results/path_similarity.json (or into
$CONVSIGHT_BENCH_RESULTS for a trial).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import check_clean, shared_dir, write_result

from convsight.models import Model, load_model
from convsight.optvis.settings import settings_for
from convsight.studies.optvis import ClassvizRequest, MaximizeRequest, classviz, maximize

LAYERS = ("features.2", "features.12", "features.28")
PAPER_CLASSES = (1, 9, 55, 250, 951)  # goldfish, ostrich, green snake, Siberian husky, lemon
PRESETS = ("paper", "robust")


def unit_row(name: str, trust: dict[str, Any]) -> dict[str, Any]:
    """One render's trust in a row: reach, rank, per-layer correlations, the flag."""
    path = trust["path"]
    decisive = [p for p in path["layers"] if p["layer"] in path["decisive"]]
    margin = statistics.fmean(p["to_top"] - p["to_random"] for p in decisive) if decisive else None
    return {
        "unit": name,
        "reach": trust["reach"]["ratio"],
        "value": trust["reach"]["value"],
        "top_mean": trust["reach"]["top_mean"],
        "rank": trust["reach"]["rank"],
        "of": trust["reach"]["of"],
        "to_top": [p["to_top"] for p in path["layers"]],
        "to_random": [p["to_random"] for p in path["layers"]],
        "last_margin": margin,
        "flagged": trust["flagged"],
    }


def summary(units: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's medians and counts."""
    ratios = [u["reach"] for u in units if u["reach"] is not None]
    margins = [u["last_margin"] for u in units if u["last_margin"] is not None]
    return {
        "units": len(units),
        "flagged": sum(u["flagged"] for u in units),
        "median_reach": statistics.median(ratios) if ratios else None,
        "median_rank": statistics.median(u["rank"] for u in units),
        "rank_1": sum(u["rank"] == 1 for u in units),
        "median_last_margin": statistics.median(margins) if margins else None,
    }


def channel_groups(args: argparse.Namespace, shared: Path, photos: Path) -> list[dict[str, Any]]:
    """VGG16's layers with each preset."""
    weights = shared / "models" / "vgg16_hed_features.pt"
    model = load_model("vgg16", weights=weights, card_fields={"input_size": (args.size,) * 2})
    groups = []
    for layer in LAYERS:
        for preset in PRESETS:
            steps = {"steps": args.robust_steps} if preset == "robust" and args.robust_steps else {}
            settings = settings_for(preset, **steps)
            request = MaximizeRequest(layer, list(range(args.channels)), settings, dataset=photos)
            began = time.perf_counter()
            result = maximize(model, request, show_progress=False)
            rows = result.to_json()["channels"]
            units = [unit_row(row["name"], row["trust"]) for row in rows]
            groups.append(_group("vgg16", layer, preset, settings.steps, units, began, result))
            print(f"vgg16 {layer} {preset}: {groups[-1]['summary']}", flush=True)
    return groups


def _group(net, target, preset, steps, units, began, result) -> dict[str, Any]:
    """A (network, layer or classes, preset) group of rows."""
    return {
        "net": net,
        "target": target,
        "preset": preset,
        "steps": steps,
        "layers": result.trust.layers,
        "units": units,
        "summary": summary(units),
        "render_seconds": result.seconds,
        "seconds": time.perf_counter() - began,
    }


def judge_model(shared: Path) -> Model:
    """The independent judge: MobileNet v1 0.5/160, RGB [0, 1], resized to 160 inside."""
    module = torch.jit.load(str(shared / "models" / "mobilenet_v1_05_160.ts"), map_location="cpu")
    return Model.from_module(module, 160, labels="imagenet", name="mobilenet_v1_05_160")


def class_groups(args: argparse.Namespace, shared: Path, photos: Path) -> list[dict[str, Any]]:
    """MobileNet v2's class models with each preset, judged by MobileNet v1."""
    weights = shared / "models" / "mobilenet_v2_imagenet.pt"
    size = (args.class_size,) * 2
    model = load_model("mobilenet_v2", weights=weights, card_fields={"input_size": size})
    judge = judge_model(shared)
    classes = list(PAPER_CLASSES[: args.classes])
    groups = []
    for preset in PRESETS:
        steps = {"steps": args.class_steps} if preset == "robust" and args.class_steps else {}
        settings = settings_for(preset, "class", **steps)
        request = ClassvizRequest(classes, settings, dataset=photos)
        began = time.perf_counter()
        result = classviz(model, request, show_progress=False, judge=judge)
        units = []
        for row in result.to_json()["classes"]:
            unit = unit_row(row["name"], row["trust"])
            unit.update(judge_top1=row["transfer"]["top1"], judge_top5=row["transfer"]["top5"])
            units.append(unit)
        group = _group("mobilenet_v2", "classes", preset, settings.steps, units, began, result)
        group["summary"].update(
            judge_top1=sum(u["judge_top1"] for u in units),
            judge_top5=sum(u["judge_top5"] for u in units),
        )
        groups.append(group)
        print(f"mobilenet_v2 classes {preset}: {group['summary']}", flush=True)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=4, help="channels of each layer")
    parser.add_argument("--classes", type=int, default=5, help="of the paper's five classes")
    parser.add_argument("--robust-steps", type=int, help="robust channels (default: 256)")
    parser.add_argument("--class-steps", type=int, help="robust classes (default: 256)")
    parser.add_argument("--size", type=int, default=128, help="VGG16's input size")
    parser.add_argument("--class-size", type=int, default=160, help="MobileNet v2's input size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    check_clean("path_similarity.py")
    torch.set_num_threads(args.threads)
    shared = shared_dir()
    photos = shared / "data" / "imagenet-samples"
    began = time.perf_counter()
    groups = channel_groups(args, shared, photos) + class_groups(args, shared, photos)
    write_result(
        "path_similarity",
        {
            "benchmark": "path_similarity",
            "settings": {**vars(args), "layers": list(LAYERS), "classes_of": list(PAPER_CLASSES)},
            "dataset": "data/imagenet-samples (104 photos)",
            "judge": "mobilenet_v1_05_160.ts (independent, RGB [0,1], resized to 160 inside)",
            "groups": groups,
            "seconds": time.perf_counter() - began,
        },
    )


if __name__ == "__main__":
    main()
