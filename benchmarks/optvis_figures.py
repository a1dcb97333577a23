"""The study's feature-visualization figures remade, paper preset beside robust preset.

    python benchmarks/optvis_figures.py [--out runs/optvis-figures] [--docs docs/img]

* VGG16 (HED features): a few channels of the first (features.0), second (features.2) and last
  (features.28) conv layers, preset ``paper`` (20 steps) above preset ``robust`` (256 steps).
* MobileNet v2: class models of ostrich, goldfish and lemon, random and mean start, paper vs
  robust. The "mean" start is the mean of ../shared/data/imagenet-samples, which holds a
  single photo per class: the mean image is that one photo.

Writes full-size PNGs into --out, small palette PNGs into --docs, and the numbers (final
objectives, dead channels, class probabilities, times) into benchmarks/results/optvis_figures.json
(through common.write_result, like every benchmark).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import shared_dir, write_result
from matplotlib.figure import Figure
from PIL import Image

from convsight.models import load_model
from convsight.optvis import class_mean_images, render_channels, render_classes
from convsight.report import write_figure

LAYERS = {
    "features.0": [0, 12, 25, 40],
    "features.2": [0, 17, 30, 63],
    "features.28": [3, 100, 300, 480],
}
CLASSES = ["ostrich", "goldfish", "lemon"]


def panel(rows: list[tuple[str, torch.Tensor, list[str]]], title: str) -> Figure:
    """Rows of images (each row: label, N x C x H x W, titles)."""
    cols = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(2.0 * cols + 0.9, 2.15 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, images, titles) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(images):
                continue
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title(titles[c], fontsize=8, pad=2)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def small_copy(src: Path, dst: Path, width: int = 900) -> Path:
    image = Image.open(src).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, optimize=True)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/optvis-figures"))
    parser.add_argument("--docs", type=Path, default=Path("docs/img"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--robust-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--layers", default=",".join(LAYERS), help="VGG16 layers to draw")
    parser.add_argument("--skip-classes", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = shared_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seed": args.seed, "layers": {}, "classes": {}}
    # docs/img copies are made after the JSON is written: copying them first would leave the
    # tree dirty for write_result (a tracked docs/img file changed)
    docs: list[tuple[Path, Path]] = []
    vgg = load_model("vgg16", weights=shared / "models" / "vgg16_hed_features.pt")
    for layer in [name.strip() for name in args.layers.split(",") if name.strip()]:
        channels = LAYERS[layer]
        rows, info = [], {}
        for preset in ("paper", "robust"):
            start = time.perf_counter()
            steps = args.robust_steps if preset == "robust" else None
            result = render_channels(
                vgg, layer, channels, preset=preset, seed=args.seed, steps=steps
            )
            info[preset] = {
                "seconds": time.perf_counter() - start,
                "values": result.values.tolist(),
                "dead": [channels[i] for i in result.dead],
                "steps": result.settings["steps"],
            }
            titles = [
                f"{c}" + (" dead" if i in result.dead else f": {v:.3g}")
                for i, (c, v) in enumerate(zip(channels, result.values.tolist(), strict=True))
            ]
            rows.append((f"{preset}, {result.settings['steps']} steps", result.images, titles))
            print(layer, preset, info[preset], flush=True)
        summary["layers"][layer] = info
        path = write_figure(
            args.out / f"vgg16_{layer}.png",
            panel(rows, f"VGG16 (HED features) {layer}: channel, final mean activation"),
        )
        docs.append((path, args.docs / f"optvis_vgg16_{layer}.png"))

    if args.skip_classes:
        write_result("optvis_figures", {**summary, "skip_classes": True})
        for src, dst in docs:
            small_copy(src, dst)
        return
    mobilenet = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    indices = [mobilenet.class_index(c) for c in CLASSES]
    means = class_mean_images(shared / "data" / "imagenet-samples", mobilenet.card, indices)
    start_pixels = torch.stack([means[i] for i in indices])
    rows = [("start for 'mean'\n(one photo)", start_pixels, CLASSES)]
    for preset in ("paper", "robust"):
        for init in ("random", "mean"):
            began = time.perf_counter()
            steps = args.robust_steps if preset == "robust" else None
            result = render_classes(
                mobilenet,
                indices,
                preset=preset,
                seed=args.seed,
                steps=steps,
                init_pixels=start_pixels if init == "mean" else None,
            )
            with torch.no_grad():
                probs = mobilenet.module(mobilenet.normalize(result.images)).softmax(1)
            p = [float(probs[r, i]) for r, i in enumerate(indices)]
            summary["classes"][f"{preset}/{init}"] = {
                "seconds": time.perf_counter() - began,
                "probability": dict(zip(CLASSES, p, strict=True)),
                "steps": result.settings["steps"],
            }
            titles = [f"{c}: p={q:.2f}" for c, q in zip(CLASSES, p, strict=True)]
            rows.append(
                (f"{preset}, {init}\n{result.settings['steps']} steps", result.images, titles)
            )
            print(preset, init, summary["classes"][f"{preset}/{init}"], flush=True)
    path = write_figure(
        args.out / "mobilenet_v2_classes.png",
        panel(rows, "MobileNet v2 class models (p: MobileNet v2's own softmax probability)"),
    )
    docs.append((path, args.docs / "optvis_mobilenet_v2_classes.png"))
    write_result("optvis_figures", summary)
    for src, dst in docs:
        small_copy(src, dst)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
