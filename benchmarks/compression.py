"""The study's compression idea, measured: `convsight compress` on the study's two networks.

    python benchmarks/compression.py [--mnist-epochs 10] [--five-class-epochs 5] [--size 64]

Trains the MNIST CNN (stride 2, same padding: the study as written) on MNIST, and the
five-class CNN on five Fashion-MNIST classes (the offline stand-in for the study's ImageNet
subset, as `convsight paper` uses; ``--fashion-mnist DIR``, default
/usr/share/datasets/fashion-mnist, at ``--size`` pixels), then runs `convsight compress` on each
at its defaults (thresholds 0.95-0.8, 3 random repeats, one fine-tuning epoch on 10000 images).
Writes benchmarks/results/compression.json: per network, its accuracy and every removal.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import shared_dir, write_result

from convsight.models import Model
from convsight.studies.compression import CompressionRequest, compress
from convsight.studies.five_class import SubsetTrainingRequest, train_subset
from convsight.studies.mnist import MnistTrainingRequest, train_mnist
from convsight.studies.subset import SubsetRequest, make_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mnist-epochs", type=int, default=10)
    parser.add_argument("--five-class-epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="five-class image side")
    parser.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = Path(os.environ.get("CONVSIGHT_DATA") or shared_dir() / "data")
    networks = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        trained = train_mnist(
            MnistTrainingRequest(
                tmp / "mnist", epochs=args.mnist_epochs, data_dir=data, seed=args.seed,
                show_progress=False,
            )
        )  # fmt: skip
        networks["MNIST CNN"] = _compress(trained.model, data / "mnist", tmp / "c-mnist", args.seed)
        networks["MNIST CNN"]["train"] = {
            "epochs": args.mnist_epochs,
            "test_accuracy": trained.test_accuracy,
            "seconds": time.perf_counter() - start,
        }
        subset = tmp / "five"
        make_subset(
            SubsetRequest(subset, from_fashion_mnist=args.fashion_mnist, seed=args.seed,
                          show_progress=False)
        )  # fmt: skip
        trained = train_subset(
            SubsetTrainingRequest(
                subset, tmp / "five-run", epochs=args.five_class_epochs, image_size=args.size,
                seed=args.seed, show_progress=False,
            )
        )  # fmt: skip
        networks["five-class CNN"] = _compress(trained.model, subset, tmp / "c-five", args.seed)
        networks["five-class CNN"]["train"] = {
            "epochs": args.five_class_epochs,
            "image_size": args.size,
            "data": "five Fashion-MNIST classes (stand-in for the study's ImageNet subset)",
            "test_accuracy": trained.test_accuracy,
        }
    write_result("compression", {"benchmark": "convsight compress", "networks": networks})


def _compress(model: Model, data: Path, out: Path, seed: int) -> dict:
    start = time.perf_counter()
    request = CompressionRequest(data, out, seed=seed, show_progress=False)
    result = compress(model, request).to_json()
    result["wall_seconds"] = time.perf_counter() - start
    print(f"{result['model']}: {len(result['trials'])} removals in {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
