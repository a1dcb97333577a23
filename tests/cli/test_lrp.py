"""`convsight saliency --methods lrp` and `evaluate --methods lrp` on the study's MNIST CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from convsight.cli import app
from convsight.models import load_model
from convsight.report import write_checkpoint


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A checkpoint of the (untrained) MNIST CNN and a folder of two noise digits."""
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    root = tmp_path_factory.mktemp("lrp")
    checkpoint = write_checkpoint(root / "model.pt", model.module, model.card)
    pixels = np.random.default_rng(1).integers(0, 255, (2, 28, 28), dtype=np.uint8)
    (root / "digits").mkdir()
    for i, digit in enumerate(pixels):
        Image.fromarray(digit, "L").save(root / "digits" / f"noise{i}.png")
    return checkpoint, root / "digits"


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_saliency_runs_lrp_and_records_its_composite(mnist, tmp_path):
    checkpoint, digits = mnist
    out = tmp_path / "sal"
    result = _run(
        "saliency", checkpoint, "--image", digits / "noise0.png", "--target", "4",
        "--methods", "lrp,saliency", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(out / "saliency.npz")
    assert arrays["lrp_attributions"].shape == (1, 1, 28, 28)
    assert np.isfinite(arrays["lrp_map"]).all() and np.abs(arrays["lrp_map"]).max() > 0
    entry = json.loads((out / "saliency.json").read_text())["methods"]["lrp"]
    assert entry["reference"] == "https://doi.org/10.1371/journal.pone.0130140"
    assert entry["options"] == {}  # the defaults: epsilon_plus_flat, canonized
    assert entry["run"]["composite"] == "epsilon_plus_flat" and entry["run"]["canonizer"] is None


@pytest.mark.slow
def test_evaluate_scores_lrp_with_deletion_and_insertion(mnist, tmp_path):
    checkpoint, digits = mnist
    metrics = ["--metrics", "deletion,insertion", "--step", "196", "--quiet"]
    result = _run("evaluate", checkpoint, "--images", digits, "--methods", "lrp,saliency",
                  "--out", tmp_path / "eval", *metrics)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [row["method"] for row in data["table"]] == ["lrp", "saliency"]
    lrp = data["methods"]["lrp"]
    assert len(lrp["deletion_auc_per_image"]) == len(lrp["insertion_auc_per_image"]) == 2
    assert all(0 <= auc <= 1 for auc in lrp["deletion_auc_per_image"])


def test_saliency_takes_the_composite_asked_for(mnist, tmp_path):
    checkpoint, digits = mnist
    maps = {}
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box"):
        out = tmp_path / composite
        result = _run(
            "saliency", checkpoint, "--image", digits / "noise0.png", "--target", "4",
            "--methods", "lrp", "--composite", composite, "--out", out, "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        entry = json.loads((out / "saliency.json").read_text())["methods"]["lrp"]
        assert entry["options"] == {"composite": composite}
        assert entry["run"]["composite"] == composite
        maps[composite] = np.load(out / "saliency.npz")["lrp_attributions"]
    assert not np.allclose(maps["epsilon_plus_flat"], maps["epsilon_gamma_box"])


@pytest.mark.parametrize("command", ["saliency", "evaluate"])
def test_an_unknown_composite_exits_2_before_any_work(mnist, tmp_path, command):
    checkpoint, digits = mnist
    images = ["--image", digits / "noise0.png"] if command == "saliency" else ["--images", digits]
    out = tmp_path / "out"
    result = _run(command, checkpoint, *images, "--methods", "lrp", "--composite", "flat",
                  "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 2
    assert "unknown LRP composite 'flat'" in result.output
    assert not out.exists()
