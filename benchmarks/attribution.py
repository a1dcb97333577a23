"""convsight's attribution methods against captum and pytorch-grad-cam, same batch, same settings.

    flock /tmp/convsight-heavy.lock python benchmarks/attribution.py [--images 16]

A batch of real photos (../shared/data/imagenet-samples, the first N by synset, each with its
true class as target) on MobileNet v2 (../shared/models). Each method runs once in each library
with the same settings; the libraries run at their defaults (captum Occlusion also at other
``perturbations_per_eval``). Records both times, their ratio (theirs / ours, > 1: convsight is
faster) and how far the outputs agree. Writes benchmarks/results/attribution.json after every
row, so an interrupted run keeps what it measured. Not a test: it takes about 15-20 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from common import earlier_provenance, results_dir, shared_dir, write_result
from torch import nn

from convsight.attribution import (
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    IntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    default_cam_layer,
)
from convsight.data import load_image_tensor
from convsight.data.imagenet import imagenet_samples
from convsight.layers import forward_to, get_layer
from convsight.models import load_model


class Normalized(nn.Module):
    """Pixels in, logits out: the model as captum and pytorch-grad-cam are given it."""

    def __init__(self, model) -> None:
        super().__init__()
        self.net = model.module
        self.card = model.card

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(self.card.normalize(p))


REPEATS = [1]  # runs of each timed call; the best counts (set by --repeats)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest of ``REPEATS[0]`` runs of ``fn`` (2 shared cores vary run to run) and the
    output of the last."""
    best = float("inf")
    for _ in range(REPEATS[0]):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """Largest difference, relative to the largest value of the reference."""
    ours, theirs = torch.as_tensor(ours).detach().float(), torch.as_tensor(theirs).detach().float()
    scale = float(theirs.abs().max())
    err = float((ours - theirs).abs().max())
    return {"max_abs_diff": err, "relative_max_diff": err / scale if scale else err}


def scaled(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's normalization: each map minus its min, over its max."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


def _floor(run: dict[str, Any], their_seconds: float) -> dict[str, Any]:
    """For the incremental engine: the time in its whole-map tail (the layers after the boxes
    are pasted in, run on every occluded row), and the ratio were everything else free."""
    tail = run.get("whole_map_tail_seconds")
    if not tail:
        return {}
    return {
        "convsight_whole_map_tail_seconds": round(tail, 3),
        "ratio_if_only_the_tail_ran": round(their_seconds / tail, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--occlusion-ppe", default="1,2,4", help="captum perturbations_per_eval")
    parser.add_argument("--skip-slow", action="store_true", help="no Occlusion / Score-CAM")
    parser.add_argument("--ig-batch", type=int, default=32, help="IG path points per pass")
    parser.add_argument(
        "--smoothgrad-rows", type=int, default=16, help="convsight SmoothGrad rows per pass"
    )
    parser.add_argument("--only", default="", help="comma-separated methods to run (default all)")
    parser.add_argument(
        "--merge", action="store_true", help="keep rows of results/attribution.json"
    )
    parser.add_argument(
        "--slow-images", type=int, default=None, help="Occlusion / Score-CAM on the first N only"
    )
    parser.add_argument(
        "--engines",
        default="eager,frozen,incremental",
        help="convsight engines for Occlusion / Score-CAM (incremental: Occlusion only)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each timed call, the best counts"
    )
    args = parser.parse_args()
    REPEATS[0] = max(1, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)

    shared = shared_dir()
    model = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    samples = imagenet_samples(shared / "data" / "imagenet-samples")[: args.images]
    x = torch.cat([load_image_tensor(path, model.card) for path, _ in samples])
    t = [label for _, label in samples]
    wrapped = Normalized(model).eval()
    f = wrapped.forward
    layer = default_cam_layer(model)  # features: the last stage, the output of features.18
    block = get_layer(model.module, "features.18")  # same output, as a module for the libraries

    rows: list[dict[str, Any]] = []
    only = {m.strip() for m in args.only.split(",") if m.strip()}

    def wanted(name: str) -> bool:
        return not only or name in only

    earlier: list[dict[str, Any]] = []  # provenance of the runs whose rows are kept
    if args.merge:
        import json

        previous = results_dir() / "attribution.json"
        if previous.is_file():  # keep the rows of the methods not run now
            kept = json.loads(previous.read_text())["rows"]
            rows.extend(r for r in kept if not wanted(r["method"]))
            earlier = earlier_provenance(previous)

    settings = {
        "images": [p.name for p, _ in samples],
        "targets": t,
        "model": "mobilenet_v2 (../shared/models/mobilenet_v2_imagenet.pt, stock padding)",
        "input": list(x.shape),
        "cam_layer": f"{layer} (= features.18 output)",
        "occlusion": "window 16x16 (all channels), stride 8, baseline 0 (black)",
        "smoothgrad": "16 samples, noise stdev 0.15 (pixels in [0, 1]), same noise in both",
        "ig": "50 steps, Gauss-Legendre, baseline 0 (black)",
    }

    def save() -> None:
        write_result(
            "attribution",
            {
                "benchmark": "convsight vs captum / pytorch-grad-cam, one batch, one run each",
                "settings": settings,
                "ratio": "their seconds / convsight seconds (> 1: convsight faster)",
                "rows": rows,
                "load_average_at_end": os.getloadavg(),
                **({"earlier_provenance": earlier} if earlier else {}),
            },
        )

    def row(method: str, library: str, theirs_name: str, their_s: float, our_s: float, **extra):
        entry = {
            "method": method,
            "images": len(t),
            "library": library,
            "their_call": theirs_name,
            "their_seconds": round(their_s, 3),
            "convsight_seconds": round(our_s, 3),
            "ratio": round(their_s / our_s, 2),
            "threads": torch.get_num_threads(),
            "timed_runs": REPEATS[0],
            "load_average": [round(v, 2) for v in os.getloadavg()],
            **extra,
        }
        rows.append(entry)
        print(entry, flush=True)
        save()

    from captum.attr import GuidedBackprop as CGuidedBackprop
    from captum.attr import IntegratedGradients as CIntegratedGradients
    from captum.attr import LayerGradCam, NoiseTunnel
    from captum.attr import Occlusion as COcclusion
    from captum.attr import Saliency as CSaliency

    # warm up both paths (first-call kernel selection) on one image
    Saliency(model).attribute(x[:2], t[:2])
    CSaliency(f).attribute(x[:2], target=t[:2])

    if wanted("saliency"):
        their_s, theirs = timed(lambda: CSaliency(f).attribute(x, target=t))
        our_s, ours = timed(lambda: Saliency(model).attribute(x, t))
        row("saliency", "captum", "Saliency", their_s, our_s, **agreement(ours, theirs))

    if wanted("ig"):
        # captum's default internal_batch_size=None puts all 16 x 50 = 800 path points through the
        # network at once; on this 24 GB machine that process is killed for memory. So captum runs
        # with the same chunk as convsight.
        their_s, theirs = timed(
            lambda: CIntegratedGradients(f).attribute(
                x, target=t, n_steps=50, internal_batch_size=args.ig_batch
            )
        )
        our_s, ours = timed(
            lambda: IntegratedGradients(model).attribute(x, t, steps=50, batch_size=args.ig_batch)
        )
        row(
            "ig",
            "captum",
            f"IntegratedGradients(n_steps=50, internal_batch_size={args.ig_batch}); the default "
            "(None: 800 rows at once) was killed for memory on this 24 GB machine",
            their_s,
            our_s,
            convsight_batch_size=args.ig_batch,
            **agreement(ours, theirs),
        )

    if wanted("smoothgrad"):
        torch.manual_seed(0)
        their_s, theirs = timed(
            lambda: NoiseTunnel(CSaliency(f)).attribute(
                x, nt_type="smoothgrad", nt_samples=16, stdevs=0.15, target=t
            )
        )
        torch.manual_seed(0)
        our_s, ours = timed(
            lambda: SmoothGrad(model).attribute(
                x, t, samples=16, stdev=0.15, batch_size=args.smoothgrad_rows
            )
        )
        row(
            "smoothgrad",
            "captum",
            "NoiseTunnel(Saliency), 16 samples (default: all 256 noisy rows in one pass, "
            "about 20 GB; killed for memory when the machine is busy)",
            their_s,
            our_s,
            **agreement(ours, theirs),
        )

    if wanted("guided"):
        plain = Saliency(model).attribute(x, t, absolute=False)
        their_s, theirs = timed(lambda: CGuidedBackprop(wrapped).attribute(x, target=t))
        our_s, ours = timed(lambda: GuidedBackprop(model).attribute(x, t))
        row(
            "guided",
            "captum",
            "GuidedBackprop",
            their_s,
            our_s,
            note="captum overrides only nn.ReLU: on MobileNet v2 (ReLU6) = the plain gradient",
            captum_vs_plain_gradient=agreement(theirs, plain),
            convsight_vs_plain_gradient=agreement(ours, plain),
            convsight_vs_captum=agreement(ours, theirs),
        )

    if wanted("gradcam"):
        their_s, theirs = timed(
            lambda: LayerGradCam(f, block).attribute(x, target=t, relu_attributions=True)
        )
        our_s, ours = timed(lambda: GradCAM(model).attribute(x, t))
        row(
            "gradcam",
            "captum",
            "LayerGradCam(features.18)",
            their_s,
            our_s,
            **agreement(ours, theirs),
        )

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def cam_targets(labels: list[int]) -> list[ClassifierOutputTarget]:
        return [ClassifierOutputTarget(i) for i in labels]

    targets = cam_targets(t)
    if wanted("gradcam-lib"):
        for name, lib_cls, ours_cls in (
            ("gradcam", "GradCAM", GradCAM),
            ("gradcam++", "GradCAMPlusPlus", GradCAMPlusPlus),
        ):
            cam = getattr(pytorch_grad_cam, lib_cls)(wrapped, [block])
            needs_grad = x.clone().requires_grad_(True)  # the model's parameters are frozen
            their_s, theirs = timed(lambda cam=cam, xx=needs_grad: cam(xx, targets))
            cam.activations_and_grads.release()
            method = ours_cls(model)
            our_s, ours = timed(lambda method=method: method.heatmap(x, t))
            row(
                name,
                "pytorch-grad-cam",
                f"{lib_cls}([features[-1]])",
                their_s,
                our_s,
                compared="maps min-max scaled and upsampled as pytorch-grad-cam returns them",
                **agreement(scaled(ours), torch.from_numpy(theirs)),
            )

    if args.skip_slow:
        return

    if args.slow_images:
        x, t = x[: args.slow_images], t[: args.slow_images]
        settings["slow_methods_images"] = len(t)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if wanted("occlusion"):
        occlusion = {"sliding_window_shapes": (3, 16, 16), "strides": (3, 8, 8), "target": t}
        runs, last = {}, {}
        for engine in engines:
            method = Occlusion(model)
            runs[engine] = timed(lambda engine=engine, m=method: m.attribute(x, t, engine=engine))
            last[engine] = method.last_run
        for ppe in [int(p) for p in args.occlusion_ppe.split(",")]:
            their_s, theirs = timed(
                lambda ppe=ppe: COcclusion(f).attribute(x, perturbations_per_eval=ppe, **occlusion)
            )
            for engine, (our_s, ours) in runs.items():
                row(
                    "occlusion",
                    "captum",
                    f"Occlusion(perturbations_per_eval={ppe})" + (" [default]" if ppe == 1 else ""),
                    their_s,
                    our_s,
                    convsight_engine=engine,
                    convsight_batch_size=16 if engine == "incremental" else 4,
                    **_floor(last[engine], their_s),
                    **agreement(ours, theirs),
                )

    if wanted("scorecam"):
        with torch.no_grad():
            acts = forward_to(model.module, model.normalize(x), [layer])[layer].flatten(2)
        low, high = acts.amin(2, keepdim=True), acts.amax(2, keepdim=True)
        constant = (high == low).float().mean().item()
        distinct = sum(
            len(torch.unique(((a - lo) / (hi - lo))[(hi > lo).flatten()], dim=0))
            for a, lo, hi in zip(acts, low, high, strict=True)
        )
        runs = {}
        for engine in [e for e in engines if e != "incremental"]:
            runs[engine] = timed(lambda engine=engine: ScoreCAM(model).heatmap(x, t, engine=engine))
        cam = pytorch_grad_cam.ScoreCAM(wrapped, [block])
        their_s, theirs = timed(lambda: cam(x, cam_targets(t)))
        cam.activations_and_grads.release()
        for engine, (our_s, ours) in runs.items():
            row(
                "scorecam",
                "pytorch-grad-cam",
                "ScoreCAM([features[-1]]), batch_size 16 [default]",
                their_s,
                our_s,
                convsight_engine=engine,
                convsight_batch_size=4,
                constant_channel_fraction=round(constant, 3),
                forward_passes_convsight=distinct + len(t),
                forward_passes_pytorch_grad_cam=acts.shape[0] * acts.shape[1],
                compared="maps min-max scaled and upsampled as pytorch-grad-cam returns them",
                **agreement(scaled(ours), torch.from_numpy(theirs)),
            )


if __name__ == "__main__":
    main()
