"""Train the study's MNIST CNN to the end, both variants; record test accuracy and wall time.

    python benchmarks/mnist.py [--epochs-stride2 10] [--epochs-stride1 6]

Writes benchmarks/results/mnist.json. Not a test: it takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import shared_dir, write_result

from convsight.studies.mnist import MnistTrainingRequest, train_mnist
from convsight.studies.numbers import STUDY

STUDY_ACCURACY = STUDY.mnist_test_accuracy  # the study's reported MNIST test accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs-stride2", type=int, default=10)
    parser.add_argument("--epochs-stride1", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = os.environ.get("CONVSIGHT_DATA") or str(shared_dir() / "data")
    variants = [
        ("stride 2, padding same (the study as written)", 2, "same", args.epochs_stride2),
        ("stride 2, padding valid", 2, "valid", args.epochs_stride2),
        ("stride 1, padding valid", 1, "valid", args.epochs_stride1),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, stride, padding, epochs in variants:
            start = time.perf_counter()
            request = MnistTrainingRequest(
                out=Path(tmp) / f"s{stride}{padding}",
                stride=stride,
                padding=padding,
                epochs=epochs,
                data_dir=data,
                seed=args.seed,
                show_progress=False,
            )
            result = train_mnist(request)
            wall = time.perf_counter() - start
            row = {
                "variant": label,
                "stride": stride,
                "padding": padding,
                "epochs": epochs,
                "test_accuracy": result.test_accuracy,
                "best_test_accuracy": max(h.test_accuracy for h in result.history),
                "test_accuracy_per_epoch": [h.test_accuracy for h in result.history],
                "train_seconds": result.seconds,
                "wall_seconds": wall,
            }
            print(row)
            rows.append(row)
    write_result(
        "mnist",
        {
            "benchmark": "MNIST CNN trained to the end (Adam lr 1e-3, batch 128, full 60k/10k)",
            "study_test_accuracy": STUDY_ACCURACY,
            "targets": {"stride 2 (study padding)": STUDY_ACCURACY, "stride 1": 0.990},
            "seed": args.seed,
            "variants": rows,
        },
    )


if __name__ == "__main__":
    main()
