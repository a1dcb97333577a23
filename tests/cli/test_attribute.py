"""`convsight saliency` and `evaluate`: outputs; bad input -> exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from convsight.cli import app
from convsight.models import load_model
from convsight.report import write_checkpoint

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model.module, model.card)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(
            folder / f"digit{i}.png"
        )
    Image.fromarray(np.zeros((30, 30), np.uint8), "L").save(folder.parent / "big.png")
    return folder


@pytest.mark.slow
def test_saliency_writes_a_panel_per_image_maps_and_json(checkpoint, digits, tmp_path):
    out = tmp_path / "sal"
    images = sorted(digits.glob("*.png"))[:2]
    result = run(
        "saliency", checkpoint, "--image", images[0], "--image", images[1], "--target", "3,7",
        "--methods", "saliency,ig,gradcam,occlusion", "--ig-steps", "4", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("saliency_digit0.png", "saliency_digit1.png", "saliency.png", "saliency.json"):
        assert (out / name).is_file(), name
    arrays = np.load(out / "saliency.npz")
    assert arrays["gradcam_map"].shape == (2, 28, 28)
    assert arrays["ig_attributions"].shape == (2, 1, 28, 28)
    summary = json.loads((out / "saliency.json").read_text())
    assert [t["class"] for t in summary["targets"]] == [3, 7]
    assert summary["methods"]["gradcam"]["options"]["layer"] == "features"  # the last stage
    assert summary["methods"]["ig"]["reference"] == "https://arxiv.org/abs/1703.01365"
    assert summary["methods"]["ig"]["options"] == {"steps": 4}
    occlusion = summary["methods"]["occlusion"]["run"]
    # --engine auto: occlusion's own default, incremental inference, which torch.fx can trace
    # on this CNN: it must have run, not the module it falls back to
    assert occlusion["requested_engine"] == occlusion["engine"] == "incremental"
    assert occlusion["fallback"] is None
    assert occlusion["memory_format"] == "channels_last"  # no view after a conv in this CNN


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--target", "10"], "out of range"),
        (["--target", "seven"], "unknown class 'seven'"),
        (["--methods", "saliency,lime"], "unknown method 'lime'"),
        (["--methods", "gradcam", "--layer", "features.9"], "unknown layer 'features.9'"),
        (["--engine", "turbo"], "unknown engine"),
    ],
)
def test_saliency_bad_input_exit_2_nothing_written(checkpoint, digits, tmp_path, extra, fragment):
    out = tmp_path / "sal"
    result = run("saliency", checkpoint, "--image", digits / "digit0.png", "--out", out, *extra)
    assert_bad_input(result, fragment)
    assert not out.exists()


def test_saliency_wrong_image_shape_exit_2(checkpoint, digits, tmp_path):
    out = tmp_path / "sal"
    big = digits.parent / "big.png"
    result = run("saliency", checkpoint, "--image", big, "--out", out, "--resize", "none")
    assert_bad_input(result, "takes exactly 28x28 (its card's input.resize is null; --resize")
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_writes_table_curves_and_sanity(checkpoint, digits, tmp_path):
    out = tmp_path / "eval"
    result = run(
        "evaluate", checkpoint, "--images", digits, "--methods", "saliency,gradcam,guided",
        "--metrics", "deletion,insertion,sanity", "--step", "98", "--sanity-images", "2",
        "--sanity-stages", "2", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "evaluation.json").read_text())
    assert [row["method"] for row in data["table"]] == ["saliency", "gradcam", "guided"]
    entry = data["methods"]["gradcam"]
    assert entry["run"]["engine"] == "eager" and entry["run"]["fallback"] is None
    # --engine auto: the curves run the module itself (eager); --engine frozen is below
    for curve in ("deletion_run", "insertion_run"):
        assert entry[curve] == {"engine": "eager", "fallback": None, "score": "probability"}
    assert len(entry["deletion_auc_per_image"]) == 3
    assert len(entry["insertion_curve"]["fraction"]) == 9  # ceil(784 / 98) + 1
    assert len(entry["sanity"]["stages"]) == 2
    for name in ("curves.png", "curves.npz", "sanity.png"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_evaluate_runs_the_curves_on_the_frozen_copy_and_gets_the_eager_numbers(
    checkpoint, digits, tmp_path
):
    """--engine frozen: the curves run the traced, frozen copy (the JSON says so, with no
    fallback) and give the eager run's AUCs; were the copy silently replaced by the module,
    the engine recorded would be "eager"."""
    runs = {}
    for engine in ("eager", "frozen"):
        out = tmp_path / engine
        result = run(
            "evaluate", checkpoint, "--images", digits, "--methods", "saliency",
            "--metrics", "deletion", "--step", "196", "--engine", engine, "--out", out, "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[engine] = json.loads((out / "evaluation.json").read_text())["methods"]["saliency"]
    for engine, entry in runs.items():
        assert entry["deletion_run"] == {"engine": engine, "fallback": None, "score": "probability"}
    np.testing.assert_allclose(
        runs["frozen"]["deletion_auc_per_image"],
        runs["eager"]["deletion_auc_per_image"],
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--metrics", "deletion,faithfulness"], "unknown metric(s) faithfulness"),
        (["--step", "0"], "at least one pixel"),
        (["--methods", "gradcam", "--layer", "conv9"], "unknown layer 'conv9'"),
    ],
)
def test_evaluate_bad_input_exit_2_nothing_written(checkpoint, digits, tmp_path, extra, fragment):
    out = tmp_path / "eval"
    result = run("evaluate", checkpoint, "--images", digits, "--out", out, *extra)
    assert_bad_input(result, fragment)
    assert not out.exists()


def test_evaluate_missing_folder_exit_2(checkpoint, tmp_path):
    result = run("evaluate", checkpoint, "--images", tmp_path / "nope", "--out", tmp_path / "o")
    assert_bad_input(result, "does not exist")


@pytest.mark.parametrize("command", ["saliency", "evaluate"])
def test_cam_on_a_layer_without_channel_maps_is_refused_before_any_output(
    command, checkpoint, digits, tmp_path
):
    out = tmp_path / "out"
    images = ["--image", sorted(digits.glob("*.png"))[0]]
    if command == "evaluate":
        images = ["--images", digits]
    result = run(
        command, checkpoint, *images, "--methods", "gradcam", "--layer", "classifier.1",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert_bad_input(result, "not C x H x W maps")
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_skips_and_reports_a_bomb_and_a_corrupt_file(checkpoint, digits, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(digits, folder)
    Image.new("L", (10000, 1)).save(folder / "bomb.png")  # refused from its header
    (folder / "corrupt.png").write_bytes((folder / "digit0.png").read_bytes()[:30])
    out = tmp_path / "eval"
    result = run(
        "evaluate", checkpoint, "--images", folder, "--methods", "saliency",
        "--metrics", "deletion", "--step", "196", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "evaluation.json").read_text())
    assert sorted(Path(s["path"]).name for s in data["skipped_images"]) == [
        "bomb.png",
        "corrupt.png",
    ]
    assert [Path(p).name for p in data["images"]] == ["digit0.png", "digit1.png", "digit2.png"]
    assert "skipped:" in result.stderr and "bomb.png" in result.stderr


def test_the_jobs_stay_importable_from_the_attribution_study():
    from convsight.studies import attribution, evaluation, saliency

    assert attribution.write_saliency is saliency.write_saliency
    assert attribution.write_evaluation is evaluation.write_evaluation
    assert attribution.evaluate_methods is evaluation.evaluate_methods
    with pytest.raises(AttributeError, match="no attribute 'write_atlas'"):
        attribution.write_atlas  # noqa: B018
