"""Is the channel ranking faithful? Zero a layer's top-k channels by each ranking; how far
does the target's score fall?

    nice python benchmarks/channel_faithfulness.py [--images 104] [--layers features.7,...]
        [--digits 200] [--mnist-layers features.0,features.3] [--mnist-epochs 2]

Two networks. MobileNet v2 on ``--images`` of the 104 sample photos in
../shared/data/imagenet-samples (evenly spread over the sorted synsets), at ``--layers``; and
the study's MNIST CNN (stride 2, same padding), trained here by convsight's own training
(:func:`convsight.studies.mnist.train_mnist`, ``--mnist-epochs`` epochs, seed ``--seed``, the
digits from ``$CONVSIGHT_DATA``; its test accuracy is recorded), on ``--digits`` test digits
evenly spread over the test set, at its two convolutions. For each photo or digit the
network's predicted class is the target. At each layer the layer's channels are ranked by

- ``crp``: CRP relevance (zennit's EpsilonPlusFlat, batch norm merged), signed, largest first;
- ``crp_abs``: the absolute CRP relevance, largest first;
- ``grad_x_act``: gradient x activation summed over space, signed, largest first;
- ``grad_x_act_abs``: its absolute value, largest first;
- ``activation``: activation magnitude, the spatial mean of |activation|, largest first;
- ``activation_mean``: the spatial mean of the (signed) activation, largest first;
- ``random``: a seeded random permutation (seed + sample index),

(relevances from :func:`convsight.analysis.channel_relevance.channel_relevance`; the CRP
rankings where the network has an LRP composite, both of these do). Then the top-k channels of
the layer's output are set to 0 (a forward hook; the rest of the network runs as usual,
residual additions included) and the fall of the target's logit (unchanged minus zeroed) is
recorded for k in ``--ks``. Per network, layer and ranking the JSON has the mean fall at each
k over the samples, the share of samples whose prediction changed, and the area over the curve
(AOC: the mean fall over the k values, each k weighted equally: with the default k = 1, 2, 4,
..., 32 each doubling of k counts the same), with its standard error over samples. A ranking
"beats" another at a layer when its AOC is higher by more than two standard errors. A k at or
above a layer's channel count (32 for the MNIST CNN's first convolution) zeroes all of them.

MobileNet v2's pooling and residual additions are written in its forward code; LRP runs them
through modules (:class:`~convsight.attribution.lrp_canonizers.MobileNetV2Canonizer`), so the
rules cover them and the sums conserve relevance. The biases (batch norm merged into the
convolutions) absorb relevance, so a layer's CRP total is a fraction of the score; the JSON
records, per layer, the mean ratio of the layer's CRP total to the score.

Writes benchmarks/results/channel_faithfulness.json. Not a test: about 2-4 minutes on one
thread for all 104 photos, and about as long again to train the MNIST CNN and run its digits.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import shared_dir, write_result
from torch import nn

from convsight.analysis.channel_relevance import channel_relevance
from convsight.attribution.cam import own_output
from convsight.attribution.lrp import check_lrp_support
from convsight.data import load_image_tensor
from convsight.data.imagenet import imagenet_samples
from convsight.data.mnist import load_mnist
from convsight.errors import ConvsightError
from convsight.layers import get_layer
from convsight.models import Model, load_model
from convsight.studies.mnist import MnistTrainingRequest, train_mnist

LAYERS = ("features.7", "features.13", "features.17")
MNIST_LAYERS = ("features.0", "features.3")
KS = (1, 2, 4, 8, 16, 32)
RANKINGS = (
    "crp",
    "crp_abs",
    "grad_x_act",
    "grad_x_act_abs",
    "activation",
    "activation_mean",
    "random",
)
CRP_CAVEAT = (
    "MobileNet v2's pooling and residual additions run through modules (MobileNetV2Canonizer), "
    "so the rules cover them and the sums conserve relevance; the biases (batch norm merged "
    "into the convolutions) absorb relevance, so a layer's CRP total is a fraction of the "
    "score (crp_total_over_score); the ranking within a layer is what is compared"
)


@contextmanager
def channels_zeroed(module: nn.Module, layer: str, keep: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``layer``'s output is multiplied by ``keep`` (B x C: 1 keeps a
    channel, 0 zeroes it), one row of ``keep`` per row of the output; an output of batch 1
    is broadcast to B rows, so the layers before it run once."""

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        shape = (keep.shape[0], keep.shape[1]) + (1,) * (output.dim() - 2)
        return output * keep.to(output).view(shape)

    handle = get_layer(module, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def order(scores: torch.Tensor) -> torch.Tensor:
    """Channel indices by ``scores``, largest first (ties in index order)."""
    return torch.sort(scores, descending=True, stable=True).indices


def activations(
    model: Model, pixels: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits (1 x classes) and each layer's own output (C x ...) for one image."""
    with ExitStack() as stack, torch.no_grad():
        records = {name: stack.enter_context(own_output(model.module, name)) for name in layers}
        logits = model.module(model.normalize(pixels))
    return logits, {name: records[name]["output"][0] for name in layers}


def rankings(
    model: Model,
    pixels: torch.Tensor,
    target: int,
    layers: Sequence[str],
    seed: int,
    crp: bool = True,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Per layer, each ranking's channel order for ``target`` on one image (1 x C x H x W);
    and per layer the CRP total over the score (empty without ``crp``)."""
    _, acts = activations(model, pixels, layers)
    gxa = channel_relevance(model, pixels, target, layers, method="grad_x_act")
    lrp = channel_relevance(model, pixels, target, layers, method="crp") if crp else None
    g = torch.Generator().manual_seed(seed)
    found: dict[str, dict[str, torch.Tensor]] = {}
    for name in layers:
        a = acts[name].flatten(1) if acts[name].dim() > 1 else acts[name].unsqueeze(1)
        rel = gxa.layers[name].relevance
        by = {
            "grad_x_act": order(rel),
            "grad_x_act_abs": order(rel.abs()),
            "activation": order(a.abs().mean(1)),
            "activation_mean": order(a.mean(1)),
            "random": torch.randperm(rel.numel(), generator=g),
        }
        if lrp is not None:
            by["crp"] = order(lrp.layers[name].relevance)
            by["crp_abs"] = order(lrp.layers[name].relevance.abs())
        found[name] = by
    ratios = {n: lrp.layers[n].total / lrp.score for n in layers} if lrp is not None else {}
    return found, ratios


def score_falls(
    model: Model,
    pixels: torch.Tensor,
    target: int,
    layer: str,
    orders: dict[str, torch.Tensor],
    ks: Sequence[int],
    batch_size: int = 16,
) -> dict[str, dict[str, list[float]]]:
    """Per ranking, the fall of the target's logit (unchanged minus zeroed) and whether the
    prediction changed, after zeroing its top-k channels of ``layer``, for each k."""
    with torch.no_grad():
        logits = model.module(model.normalize(pixels))
    base, predicted = float(logits[0, target]), int(logits[0].argmax())
    names = list(orders)
    count = next(iter(orders.values())).numel()
    keep = torch.ones(len(names) * len(ks), count)
    for i, name in enumerate(names):
        for j, k in enumerate(ks):
            keep[i * len(ks) + j, orders[name][:k]] = 0
    scores, classes = [], []
    x = model.normalize(pixels)
    with torch.no_grad():
        for start in range(0, keep.shape[0], batch_size):
            with channels_zeroed(model.module, layer, keep[start : start + batch_size]):
                out = model.module(x)
            scores.append(out[:, target])
            classes.append(out.argmax(1))
    fall = (base - torch.cat(scores)).view(len(names), len(ks))
    changed = (torch.cat(classes) != predicted).view(len(names), len(ks))
    return {
        name: {"fall": fall[i].tolist(), "changed": changed[i].float().tolist()}
        for i, name in enumerate(names)
    }


def aoc(falls: np.ndarray) -> np.ndarray:
    """Area over the curve of each row of falls (photos x ks): the mean over the k values."""
    return falls.mean(axis=-1)


def summarize(per_photo: dict[str, list[dict[str, list[float]]]], ks: Sequence[int]) -> dict:
    """Per ranking: the mean fall and the share of changed predictions at each k, the AOC and
    its standard error over the photos."""
    out = {}
    for name, rows in per_photo.items():
        falls = np.array([r["fall"] for r in rows])
        changed = np.array([r["changed"] for r in rows])
        areas = aoc(falls)
        out[name] = {
            "k": list(ks),
            "mean_fall": falls.mean(0).tolist(),
            "prediction_changed": changed.mean(0).tolist(),
            "aoc": float(areas.mean()),
            "aoc_sem": float(areas.std(ddof=1) / np.sqrt(len(areas))) if len(areas) > 1 else 0.0,
            "photos": len(rows),
        }
    return out


def beats(summary: dict[str, Any], mine: str, other: str) -> str:
    """'beats', 'ties with' (within two standard errors) or 'loses to'."""
    a, b = summary[mine], summary[other]
    margin = 2 * float(np.hypot(a["aoc_sem"], b["aoc_sem"]))
    if abs(a["aoc"] - b["aoc"]) <= margin:
        return "ties with"
    return "beats" if a["aoc"] > b["aoc"] else "loses to"


def verdict(layer: str, summary: dict[str, Any]) -> str:
    """One sentence: does each relevance ranking beat activation magnitude and random?"""
    parts = []
    for mine, title in (("crp", "CRP relevance"), ("grad_x_act", "gradient x activation")):
        if mine not in summary:
            continue
        s = summary[mine]["aoc"]
        vs = [
            f"{beats(summary, mine, other)} {words} ({summary[other]['aoc']:.2f})"
            for other, words in (("activation", "activation magnitude"), ("random", "random"))
        ]
        parts.append(f"{title} (AOC {s:.2f}) {' and '.join(vs)}")
    return f"{layer}: " + "; ".join(parts) + " (ties: within two standard errors)."


def spread(samples: list, n: int) -> list:
    """``n`` of ``samples`` evenly spread over the list."""
    n = min(n, len(samples))
    return [samples[i * len(samples) // n] for i in range(n)]


Sample = tuple[str, Callable[[], torch.Tensor], int]
"""One photo or digit: its name, how to get its pixels (1 x C x H x W in [0, 1]), its label."""


def evaluate_network(
    title: str,
    model: Model,
    samples: Sequence[Sample],
    layers: Sequence[str],
    ks: Sequence[int],
    seed: int,
) -> dict[str, Any]:
    """Network ``title`` over ``samples``, each one's predicted class the target, each
    ranking's top-k zeroed at each layer: per layer the summary of :func:`summarize` and the
    verdict; the accuracy (top-1 on these samples), the mean target logit and whether CRP
    applied."""
    try:
        check_lrp_support(model)
        crp = True
    except ConvsightError:
        crp = False
    per_layer: dict[str, dict[str, list]] = {n: {} for n in layers}
    ratios: dict[str, list[float]] = {n: [] for n in layers}
    channels: dict[str, int] = {}
    hits, scores, began = 0, [], time.perf_counter()
    for index, (name, load, label) in enumerate(samples):
        pixels = load()
        with torch.no_grad():
            logits = model.module(model.normalize(pixels))
        target = int(logits.argmax(1))
        scores.append(float(logits[0, target]))
        hits += target == label
        found, ratio = rankings(model, pixels, target, layers, seed + index, crp)
        for layer in layers:
            channels[layer] = found[layer]["random"].numel()
            ratios[layer].extend([ratio[layer]] if layer in ratio else [])
            falls = score_falls(model, pixels, target, layer, found[layer], ks)
            for ranking, row in falls.items():
                per_layer[layer].setdefault(ranking, []).append(row)
        print(f"{index + 1}/{len(samples)} {name} ({time.perf_counter() - began:.0f} s)")
    result_layers = {}
    for layer in layers:
        summary = summarize(per_layer[layer], ks)
        summary = {r: summary[r] for r in RANKINGS if r in summary}
        result_layers[layer] = {
            "channels": channels[layer],
            "rankings": summary,
            "crp_total_over_score": float(np.mean(ratios[layer])) if ratios[layer] else None,
            "verdict": verdict(f"{title} {layer}", summary),
        }
        print(result_layers[layer]["verdict"])
    return {
        "samples": len(samples),
        "top1_on_these_samples": hits / len(samples),
        "mean_target_logit": float(np.mean(scores)),
        "crp": crp,
        "seconds": time.perf_counter() - began,
        "layers": result_layers,
    }


def mobilenet_samples(count: int) -> tuple[Model, list[Sample]]:
    """MobileNet v2 and ``count`` sample photos evenly spread over the sorted synsets."""
    shared = shared_dir()
    model = load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")
    photos = spread(imagenet_samples(shared / "data" / "imagenet-samples"), count)
    return model, [
        (path.name, functools.partial(load_image_tensor, path, model.card), label)
        for path, label in photos
    ]


def trained_mnist(epochs: int, train_limit: int | None, seed: int) -> tuple[Model, dict]:
    """The study's MNIST CNN trained here by convsight's own training (stride 2, same padding,
    as the study states; the digits from ``$CONVSIGHT_DATA``): the model and its record."""
    with tempfile.TemporaryDirectory() as out:
        request = MnistTrainingRequest(
            out=Path(out) / "mnist", epochs=epochs, train_limit=train_limit, seed=seed,
            device="cpu", show_progress=False,
        )  # fmt: skip
        trained = train_mnist(request)
    record = {
        "trained_by": "convsight.studies.mnist.train_mnist (MnistTrainingRequest)",
        "architecture": f"stride {request.stride}, {request.padding} padding",
        "epochs": epochs,
        "seed": seed,
        "optimizer": f"Adam, lr {request.lr}, batch {request.batch_size}",
        "train_examples": trained.settings["train_examples"],
        "test_accuracy": trained.test_accuracy,
        "test_examples": trained.settings["test_examples"],
        "training_seconds": trained.seconds,
    }
    return trained.model, record


def mnist_samples(count: int) -> list[Sample]:
    """``count`` test digits evenly spread over the MNIST test set."""
    images, labels = load_mnist("test")
    chosen = spread(list(range(len(images))), count)
    return [
        (f"test digit {i}", functools.partial(_digit, images[i]), int(labels[i])) for i in chosen
    ]


def _digit(image: torch.Tensor) -> torch.Tensor:
    return image.float().div(255).view(1, 1, *image.shape)


def settings_of(args: argparse.Namespace, ks: Sequence[int], seconds: float) -> dict[str, Any]:
    """What the JSON's ``settings`` hold."""
    return {
        "images": args.images,
        "digits": args.digits,
        "photos": "evenly spread over the sorted sample photos (imagenet-samples)",
        "digits_chosen": "evenly spread over the MNIST test set",
        "target": "the predicted class's logit",
        "fall": "target logit of the unchanged image minus that with the top-k zeroed",
        "ks": list(ks),
        "aoc": "mean fall over the k values, each k weighted equally (log-spaced k: "
        "each doubling counts the same); a k at or above a layer's channel count zeroes all "
        "of them",
        "verdict": "beats / loses to: AOC higher / lower by more than two standard "
        "errors (over samples, combined); else ties with",
        "rankings": list(RANKINGS),
        "activation": "activation = spatial mean of |activation|; activation_mean = "
        "spatial mean of the signed activation",
        "crp_composite": "epsilon_plus_flat, batch norm merged (SequentialMergeBatchNorm) "
        "where the network has batch norm",
        "random_seed": f"{args.seed} + sample index",
        "zeroing": "a forward hook sets the channels of the layer's output to 0",
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=104)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--digits", type=int, default=200, help="MNIST test digits (0: none)")
    parser.add_argument("--mnist-layers", default=",".join(MNIST_LAYERS))
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--mnist-train", type=int, default=None, help="training digits (all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    ks = [int(s) for s in args.ks.split(",") if s.strip()]
    began = time.perf_counter()
    networks: dict[str, Any] = {}
    if args.images:
        model, samples = mobilenet_samples(args.images)
        found = evaluate_network("MobileNet v2", model, samples, layers, ks, args.seed)
        networks["mobilenet_v2"] = {
            "weights": "../shared/models/mobilenet_v2_imagenet.pt (stock padding)",
            "samples_are": "sample photos",
            "crp_caveat": CRP_CAVEAT,
            **found,
        }
    if args.digits:
        mnist_layers = [s.strip() for s in args.mnist_layers.split(",") if s.strip()]
        model, record = trained_mnist(args.mnist_epochs, args.mnist_train, args.seed)
        digits = mnist_samples(args.digits)
        found = evaluate_network("MNIST CNN", model, digits, mnist_layers, ks, args.seed)
        networks["mnist_cnn"] = {**record, "samples_are": "MNIST test digits", **found}
    write_result(
        "channel_faithfulness",
        {
            "benchmark": "zeroing each ranking's top-k channels of a layer: fall of the score",
            "settings": settings_of(args, ks, time.perf_counter() - began),
            "networks": networks,
            "skipped": {
                "vgg16": "the study's VGG16 is the conv stack of an edge detector, no classifier",
            },
        },
    )


if __name__ == "__main__":
    main()
