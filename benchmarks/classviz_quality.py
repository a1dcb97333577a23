"""Class-model quality: are MobileNet v2's class visualizations recognised by another network?

    make bench-deps && python benchmarks/classviz_quality.py [--classes 40] [--seeds 2] \
        [--size 160] [--threads 1]

Renders one image per class (all classes in one batch) on MobileNet v2 (../shared/models,
mean = std = 128/255, torchvision padding) with several recipes and step counts, and judges
each image with the independent MobileNet v1 0.5/160 (TorchScript, RGB [0, 1]): top-1 and
top-5 hit rates. Recipes:

* ``paper``: the study (N(0, 1) start in input space, plain gradient ascent, step 0.5 along
  the RMS-normalized gradient, logit - 0.1 L1).
* ``lucent-style``: Fourier + decorrelated colour, Lucent's transforms, Adam 0.1, logit, no
  skip gradient (the best Lucent-style recipe of the issue's trial), every setting written out
  in :data:`LUCENT_STYLE`, not taken from a preset that may move.
* ``robust``: convsight's robust preset for classes (CLASS_PRESETS["robust"]: a wide random
  zoom 0.5-1.5, Adam at a constant 0.05, the penultimate features' dot x cosine with the
  class direction, the gradient through residual branches x 0.3), at 128 and 64 steps; and
  ablations (:data:`ABLATIONS`) that change one ingredient each, on ``--ablation-classes``
  classes with every seed (the robust rows on those classes are their baseline). With a
  constant learning rate the image after 64 of 128 steps is the image of a 64-step render
  (same seeds, same draws), so 64-step rows are snapshots of the 128-step renders.
* ``robust bf16``: the robust preset under bf16 autocast (``precision="bf16"``), only on a CPU
  with native bf16 (avx512_bf16 or amx_bf16) or with ``--bf16``: elsewhere bf16 is emulated,
  many times slower, and the JSON says the row was skipped and why.
* ``torch-lucent``: torch-lucent 0.1.8's ``render_vis`` on the same logit, the model wrapped
  with its own normalization (``preprocess=False``), defaults otherwise (Adam 0.05).

Every row reports forward/backward passes per image (steps x views). Each model gets its own
normalization. Writes benchmarks/results/classviz_quality.json (``--name``); with seeds other
than the default (``--seed-list``) the rows of seeded recipes are named ``<recipe> (seeds 2,
3)``. Recipes were screened with benchmarks/classviz_screen.py (other seeds, the ablation
classes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch
from common import machine, shared_dir, write_result
from torch import nn

from convsight.data.imagenet import imagenet_samples
from convsight.data.images import load_image_tensor
from convsight.models import load_model
from convsight.optvis import render_classes
from convsight.optvis.settings import RenderSettings

PAPER_CLASSES = (1, 9, 55, 250, 951)  # goldfish, ostrich, green snake, Siberian husky, lemon

# The Lucent-style baseline, every RenderSettings field written out (steps and size are the
# rows'), so that no preset default reaches it: Lucent's image (Fourier spectrum from a 0.01
# start, 1/f scaling, decorrelated colour, sigmoid), Lucent's transforms (pad 12, jitter 8,
# scale 0.9-1.1, rotate -10..10 with extra zeros, jitter 4), Adam at a constant 0.1, the class
# logit, no penalties, no skip gradient, fp32. (Built on the robust class preset, it inherited
# that preset's skip_gradient=0.3 when the preset gained it; the published rows have none.)
LUCENT_STYLE: dict[str, Any] = dict(
    param="fourier",
    decorrelate=True,
    init_std=0.01,
    decay_power=1.0,
    coarse_to_fine=0.0,
    coarse_steps=0.0,
    stop_when_flat=0,
    optimizer="adam",
    lr=0.1,
    normalize_grad=False,
    lr_schedule="constant",
    pad=12,
    jitter=8,
    scales=tuple(1 + (i - 5) / 50 for i in range(11)),
    angles=tuple(list(range(-10, 11)) + 5 * [0]),
    jitter_after=4,
    flip=False,
    noise=0.0,
    color_shift=0.0,
    views=1,
    blur_every=0,
    blur_sigma=0.5,
    l1=0.0,
    l2=0.0,
    tv=0.0,
    blur=0.0,
    activation_penalty=0.0,
    penalty_layers=(),
    class_objective="logit",
    cossim_power=2.0,
    dead_steps=3,
    precision="fp32",
    channels_last=True,
    chunk=0,
    ghost=0.0,
    bn_prior=0.0,
    skip_gradient=1.0,
    average=0.0,
    slice_channels=True,
)
LUCENT_STYLE_NAME = f"lucent-style adam {LUCENT_STYLE['lr']:g}"  # the rows' name, as published


def lucent_style() -> dict[str, Any]:
    """render_classes kwargs of the Lucent-style baseline; fails when RenderSettings has a
    field the recipe does not set (a preset default would reach the baseline through it)."""
    fields = {f.name for f in dataclasses.fields(RenderSettings)} - {"preset", "steps", "size"}
    missing = sorted(fields - set(LUCENT_STYLE))
    if missing:
        raise SystemExit(f"LUCENT_STYLE does not set {', '.join(missing)}: write them out")
    # "robust" only names the base in the recorded settings: every field is overridden
    return {"preset": "robust", **LUCENT_STYLE}


# Each ablation changes one ingredient of the robust class preset (CLASS_PRESETS["robust"]:
# zoom 0.5-1.5, constant Adam 0.05, cossim, skip gradient 0.3) back to an alternative.
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("wide zoom (0.75-1.25)", dict(scales=tuple(round(0.75 + 0.05 * i, 2) for i in range(11)))),
    ("wide zoom (Lucid's 0.9-1.1)", dict(scales=tuple(1 + (i - 5) / 50 for i in range(11)))),
    ("lr 0.05 (0.1)", dict(lr=0.1)),
    ("constant lr (cosine from 0.05)", dict(lr_schedule="cosine")),
    ("cossim (margin: logit - mean logit)", dict(class_objective="margin")),
    ("cossim (logit)", dict(class_objective="logit")),
    ("skip gradient 0.3 (off)", dict(skip_gradient=1.0)),
    ("skip gradient 0.3 (0.6)", dict(skip_gradient=0.6)),
]


def snapshots(change: dict[str, Any]) -> tuple[int, ...]:
    """(64,): judge the 128-step render at step 64 too; () when the learning rate is not
    constant (step 64 of a 128-step decay is not a 64-step render)."""
    return (64,) if change.get("lr_schedule", "constant") == "constant" else ()


def pick_classes(samples: list[tuple[Any, int]], count: int) -> list[int]:
    """The study's five classes, then evenly spaced sample classes."""
    others = [c for _, c in samples if c not in PAPER_CLASSES]
    step = max(1, len(others) // max(1, count - len(PAPER_CLASSES)))
    chosen = list(PAPER_CLASSES) + others[::step]
    return sorted(chosen[:count])


class Judge:
    """MobileNet v1 0.5/160: RGB in [0, 1], any size, 1000 logits."""

    def __init__(self, path) -> None:
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def hits(self, images: torch.Tensor, classes: list[int]) -> dict[str, Any]:
        logits = torch.cat([self.module(images[i : i + 20]) for i in range(0, len(images), 20)])
        target = torch.tensor(classes)
        top5 = logits.topk(5, 1).indices
        top1 = (top5[:, 0] == target).tolist()
        in5 = (top5 == target[:, None]).any(1).tolist()
        prob = logits.softmax(1).gather(1, target[:, None])[:, 0]
        return {"top1": top1, "top5": in5, "judge_prob": prob.tolist()}


def lucent_classes(
    model, classes: list[int], steps: list[int], size: int
) -> dict[int, torch.Tensor]:
    """torch-lucent's render of each class logit, one class per call (its users' way)."""
    from lucent.optvis import objectives, param, render

    mean = torch.tensor(model.card.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.card.std).view(1, 3, 1, 1)

    class Normalize(nn.Module):
        def forward(self, x):
            return (x - mean) / std

    wrapped = nn.Sequential(Normalize(), model.module).eval()
    out: dict[int, list[torch.Tensor]] = {s: [] for s in steps}
    for c in classes:
        images = render.render_vis(
            wrapped,
            objectives.channel("1_classifier_1", c),
            param_f=lambda: param.image(size),
            thresholds=tuple(steps),
            fixed_image_size=size,
            preprocess=False,
            show_image=False,
            progress=False,
        )
        for m in wrapped.modules():  # render_vis leaves a forward hook on every module
            m._forward_hooks.clear()
        for s, image in zip(steps, images, strict=True):
            out[s].append(torch.from_numpy(image[0]).permute(2, 0, 1).float())
    return {s: torch.stack(v) for s, v in out.items()}


def summarize(
    rows: list[dict[str, Any]],
    name: str,
    steps: int,
    judged: dict,
    n: int,
    seconds: float,
    views: int = 1,
):
    row = {
        "recipe": name,
        "steps": steps,
        "views": views,
        "passes": steps * views,  # forward/backward passes per image
        "images": n,  # classes x seeds
        "top1": int(sum(judged["top1"])),
        "top5": int(sum(judged["top5"])),
        "top1_rate": float(np.mean(judged["top1"])),
        "top5_rate": float(np.mean(judged["top5"])),
        "judge_prob_mean": float(np.mean(judged["judge_prob"])),
        "seconds": seconds,
    }
    rows.append({**row, **{k: judged[k] for k in ("top1", "top5")}})
    print(
        f"{name:38s} steps {steps:4d} x {views} views: top-1 {row['top1']:3d}/{n}"
        f"  top-5 {row['top5']:3d}/{n}"
        f"  ({seconds:.0f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--ablation-classes", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--skip-lucent", action="store_true")
    parser.add_argument("--lucent-classes", type=int, default=40)
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed-list", default="", help="e.g. '1': these seeds instead")
    parser.add_argument("--name", default="classviz_quality", help="results file name")
    parser.add_argument("--bf16", action="store_true", help="run the bf16 row on any CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = shared_dir()
    model = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    judge = Judge(shared / "models" / "mobilenet_v1_05_160.ts")
    samples = imagenet_samples(shared / "data" / "imagenet-samples")
    classes = pick_classes(samples, args.classes)
    ablation_classes = classes[:: max(1, len(classes) // args.ablation_classes)][
        : args.ablation_classes
    ]
    seeds = (
        [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    )
    rows: list[dict[str, Any]] = []

    photos = {c: p for p, c in samples}
    real = torch.cat([load_image_tensor(photos[c], model.card) for c in classes])
    summarize(rows, "real photo (one per class)", 0, judge.hits(real, classes), len(classes), 0)

    robust = dict(preset="robust")
    recipes = [
        # name, render kwargs, steps, snapshots, classes, seeds
        ("paper", dict(preset="paper"), 20, (), classes, seeds[:1]),
        (LUCENT_STYLE_NAME, lucent_style(), 128, (64,), classes, seeds),
        ("robust", robust, 128, (64,), classes, seeds),
        ("robust bf16", {**robust, "precision": "bf16"}, 128, (64,), classes, seeds),
        *[
            (
                f"robust - {name}",
                {**robust, **change},
                128,
                snapshots(change),
                ablation_classes,
                seeds,
            )
            for name, change in ABLATIONS
        ],
    ]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    skipped = {}
    native_bf16 = {"avx512_bf16", "amx_bf16"} & set(machine()["cpu_vector_flags"])
    if not (args.bf16 or native_bf16 or "robust bf16" in only):
        recipes = [r for r in recipes if r[0] != "robust bf16"]
        skipped["robust bf16"] = "no avx512_bf16 or amx_bf16 on this CPU: bf16 is emulated"
    # rows of seeded recipes name their seeds when they are not the default ones
    default_seeds = seeds == list(range(args.seeds))
    suffix = "" if default_seeds else f" (seeds {', '.join(str(s) for s in seeds)})"

    def save() -> None:
        write_result(
            args.name,
            {
                "model": "mobilenet_v2 (shared mobilenet_v2_imagenet.pt, torchvision padding)",
                "judge": "mobilenet_v1_05_160.ts (independent, RGB [0,1], resized to 160 inside)",
                "classes": classes,
                "ablation_classes": ablation_classes,
                "seeds": seeds,
                "size": args.size,
                "threads": torch.get_num_threads(),
                "load_average_after": os.getloadavg()[0],
                "recipes": {
                    name + suffix: {"steps": steps, "snapshots": list(snaps), **kwargs}
                    for name, kwargs, steps, snaps, _, _ in recipes
                    if not only or name in only
                },
                "skipped": skipped,
                "rows": rows,
            },
        )

    for name, kwargs, steps, snaps, which, seed_list in recipes:
        if only and name not in only:
            continue
        judged: dict[int, dict[str, list]] = {}
        base: dict[int, dict[str, list]] = {}  # the ablations' baseline, per step count
        start = time.perf_counter()
        for seed in seed_list:
            result = render_classes(
                model, which, seed=seed, steps=steps, size=args.size, snapshots=snaps, **kwargs
            )
            for s, images in [*result.snapshots.items(), (steps, result.images)]:
                hits = judge.hits(images, which)
                if name == "robust":
                    # the ablations' baseline: the same rows (per-row seeds) on their classes
                    keep = [which.index(c) for c in ablation_classes]
                    at = base.setdefault(s, {"top1": [], "top5": [], "judge_prob": []})
                    for k, v in hits.items():
                        at[k].extend(v[i] for i in keep)
                acc = judged.setdefault(s, {"top1": [], "top5": [], "judge_prob": []})
                for k in acc:
                    acc[k].extend(hits[k])
        seconds = time.perf_counter() - start
        views = result.settings["views"]
        for s in sorted(base):
            n = len(base[s]["top1"])
            summarize(rows, "robust (ablation classes)" + suffix, s, base[s], n, 0, views)
        for s in sorted(judged):
            summarize(rows, name + suffix, s, judged[s], len(judged[s]["top1"]), seconds, views)
        save()
    if not args.skip_lucent and (not only or "torch-lucent" in only):
        start = time.perf_counter()
        lucent_cls = classes[:: max(1, len(classes) // args.lucent_classes)][: args.lucent_classes]
        lucent = lucent_classes(model, lucent_cls, [64, 128], args.size)
        seconds = time.perf_counter() - start
        for s, images in lucent.items():
            summarize(
                rows,
                "torch-lucent (adam 0.05)",
                s,
                judge.hits(images, lucent_cls),
                len(lucent_cls),
                seconds,
            )
    save()


if __name__ == "__main__":
    main()
