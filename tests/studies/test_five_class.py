"""The five-class pipeline on a generated image tree: subset, train, confusion, class means."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from convsight.cli import app
from convsight.data.folder import class_means, load_folder
from convsight.errors import ConvsightError
from convsight.models import load_model
from tests.studies.views import assert_shows, names_and_bytes

runner = CliRunner()
SHAPES = {
    "red circle": ((220, 40, 40), "ellipse"),
    "green square": ((40, 200, 60), "rectangle"),
    "blue triangle": ((50, 70, 230), "polygon"),
}


def draw(colour, shape, rng) -> Image.Image:
    img = Image.fromarray(rng.integers(90, 160, (48, 48, 3), dtype=np.uint8))
    pen = ImageDraw.Draw(img)
    x, y, r = rng.integers(14, 34), rng.integers(14, 34), rng.integers(8, 13)
    if shape == "polygon":
        pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    else:
        getattr(pen, shape)([x - r, y - r, x + r, y + r], fill=colour)
    return img


@pytest.fixture(scope="module")
def shape_tree(tmp_path_factory):
    """class/<n>.jpg for three classes, plus a corrupt JPEG, a text file and an empty class."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for name, (colour, shape) in SHAPES.items():
        (root / name).mkdir()
        for i in range(40):
            draw(colour, shape, rng).save(root / name / f"{i:03d}.jpg", quality=92)
    good = (root / "red circle" / "000.jpg").read_bytes()
    (root / "red circle" / "broken.jpg").write_bytes(good[: len(good) // 3])
    (root / "green square" / "notes.txt").write_text("not an image")
    (root / "empty class").mkdir()
    return root


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_subset_reports_bad_files_and_empty_classes(shape_tree, tmp_path):
    out = tmp_path / "subset"
    result = invoke("data", "subset", "--from-folder", shape_tree, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == sorted(SHAPES)
    skipped = {item["path"].split("/")[-1]: item["reason"] for item in manifest["skipped"]}
    assert "corrupt" in skipped["broken.jpg"] and "notes.txt" in skipped
    assert any("empty class" in m for m in manifest["missing"])
    assert "broken.jpg" in result.stderr and "empty class" in result.stderr
    assert manifest["counts"]["red circle"] == {"train": 32, "test": 8}
    listed = {e["path"] for e in manifest["files"]}
    on_disk = {str(p) for p in out.rglob("*.jpg")}
    assert listed == on_disk and len(listed) == 120
    assert not (out / "test" / "red circle" / "broken.jpg").exists()


@pytest.mark.slow
def test_subset_split_is_reproducible(shape_tree, tmp_path):
    def split(seed, name):
        out = tmp_path / name
        assert (
            invoke(
                "data",
                "subset",
                "--from-folder",
                shape_tree,
                "--out",
                out,
                "--seed",
                seed,
                "--quiet",
            ).exit_code
            == 0
        )
        files = json.loads((out / "manifest.json").read_text())["files"]
        return {(e["split"], e["source"]) for e in files}

    first = split(1, "a")
    assert first == split(1, "b")
    assert first != split(2, "c")


@pytest.mark.slow
def test_subset_from_imagenet_tree_with_a_missing_synset(shape_tree, tmp_path):
    root = tmp_path / "imagenet" / "train"
    for synset, name in (("n01443537", "red circle"), ("n01518878", "green square")):
        shutil.copytree(shape_tree / name, root / synset)
    out = tmp_path / "subset"
    result = invoke(
        "data",
        "subset",
        "--imagenet-root",
        root.parent,
        "--out",
        out,
        "--quiet",
        "--synsets",
        "n01443537,n09999999,n01518878",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["goldfish", "ostrich"]  # readable names of the study's synsets
    assert any("n09999999" in m for m in manifest["missing"])
    assert "n09999999" in result.stderr


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2"])
def test_test_fraction_outside_zero_one_exits_2(shape_tree, tmp_path, fraction):
    out = tmp_path / "subset"
    result = invoke(
        "data", "subset", "--from-folder", shape_tree, "--out", out, "--test-fraction", fraction
    )
    assert result.exit_code == 2 and "--test-fraction" in result.stderr
    assert not out.exists()


def test_subset_without_usable_classes_exits_2(tmp_path):
    (tmp_path / "src" / "only").mkdir(parents=True)
    result = invoke("data", "subset", "--from-folder", tmp_path / "src", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "fewer than two usable classes" in result.stderr


@pytest.fixture(scope="module")
def trained(shape_tree, tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    assert (
        invoke(
            "data", "subset", "--from-folder", shape_tree, "--out", base / "subset", "--quiet"
        ).exit_code
        == 0
    )
    result = invoke(
        "train",
        "subset",
        "--data",
        base / "subset",
        "--image-size",
        "32",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--out",
        base / "run",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return base


@pytest.mark.slow
def test_self_built_cnn_beats_chance(trained):
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert metrics["classes"] == sorted(SHAPES)
    assert metrics["test_accuracy"] > 0.8  # chance is 1/3
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 24 and np.trace(matrix) / matrix.sum() == pytest.approx(
        metrics["test_accuracy"]
    )
    assert set(metrics["per_class_accuracy"]) == set(SHAPES)
    for png in ("confusion_matrix.png", "training_curves.png", "class_means.png"):
        assert (trained / "run" / png).stat().st_size > 2000
    model = load_model(str(trained / "run" / "model.pt"))
    assert model.card.labels == sorted(SHAPES) and model.card.input_size == (32, 32)


@pytest.mark.slow
def test_class_means_are_the_mean_training_images(trained):
    saved = np.load(trained / "run" / "class_means.npz")
    labels = list(saved["labels"])
    means = torch.from_numpy(saved["means"])
    card = load_model(str(trained / "run" / "model.pt")).card
    data = load_folder(trained / "subset" / "train", card, labels)
    assert torch.allclose(means, class_means(data), atol=1e-6)
    red = means[labels.index("red circle")]
    blue = means[labels.index("blue triangle")]
    assert red[0].mean() > red[2].mean() and blue[2].mean() > blue[0].mean()


@pytest.mark.slow
def test_finetune_a_pretrained_backbone(trained, shared, tmp_path):
    weights = shared / "models" / "mobilenet_v2_imagenet.pt"
    result = invoke(
        "train",
        "subset",
        "--data",
        trained / "subset",
        "--model",
        "mobilenet_v2",
        "--finetune",
        "--weights",
        weights,
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--out",
        tmp_path / "ft",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.6
    tuned = load_model(str(tmp_path / "ft" / "model.pt"))
    original = load_model("mobilenet_v2", weights=weights)
    # Only the head was trained: the backbone's weights are unchanged.
    for name, value in original.module.features.state_dict().items():
        assert torch.equal(value, tuned.module.features.state_dict()[name]), name
    assert tuned.module.classifier[1].out_features == 3


@pytest.mark.slow
def test_train_subset_bad_inputs_exit_2(tmp_path, trained):
    result = invoke("train", "subset", "--data", tmp_path / "nothing", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "has no train/" in result.stderr
    result = invoke(
        "train",
        "subset",
        "--data",
        trained / "subset",
        "--model",
        "five-class-cnn",
        "--finetune",
        "--out",
        tmp_path / "o",
    )
    assert result.exit_code == 2 and "pretrained backbone" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("init", ["random", "mean"])
def test_class_models_of_the_trained_network(trained, tmp_path, init):
    """Figure 4.2 on the generated classes: each class model is recognised as its class."""
    out = tmp_path / "classes"
    extra = ["--dataset", trained / "subset" / "train"] if init == "mean" else []
    result = invoke(
        "classviz",
        trained / "run" / "model.pt",
        "--classes",
        "all",
        "--init",
        init,
        *extra,
        "--steps",
        "32",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["classes"]
    assert [r["name"] for r in rows] == sorted(SHAPES)
    hits = sum(r["model_top1"] == r["name"] for r in rows)
    assert hits == len(SHAPES), rows  # chance would be one in three
    assert (out / "grid.png").stat().st_size > 2000


@pytest.mark.slow
def test_unreadable_training_images_are_skipped_and_reported(trained, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(trained / "subset", subset)
    victim = sorted((subset / "train" / "red circle").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated: decodes to nothing
    result = invoke(
        "train", "subset", "--data", subset, "--image-size", "16", "--epochs", "1",
        "--out", tmp_path / "run", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [s["path"] for s in metrics["skipped_images"]] == [str(victim)]
    assert metrics["settings"]["train_examples"] == len(list((subset / "train").rglob("*.jpg"))) - 1


@pytest.mark.slow
def test_subset_training_that_diverges_leaves_nothing(trained, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "train", "subset", "--data", trained / "subset", "--image-size", "16", "--epochs", "1",
        "--lr", "1e30", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 2 and "diverged" in result.stderr, result.output
    assert not out.exists()


@pytest.mark.slow
def test_train_subset_result_is_what_was_written(trained, tmp_path):
    from convsight.studies.five_class import (
        SubsetTrainingRequest,
        SubsetTrainingResult,
        train_subset,
    )

    with pytest.raises(ConvsightError, match="--image-size must be at least 16"):
        SubsetTrainingRequest(trained / "subset", tmp_path / "o", image_size=8)
    out = tmp_path / "run"
    request = SubsetTrainingRequest(
        trained / "subset", out, image_size=16, epochs=1, show_progress=False
    )
    result = train_subset(request)
    assert isinstance(result, SubsetTrainingResult)
    assert json.loads((out / "metrics.json").read_text()) == result.to_json()
    assert all(p.is_file() for p in result.files) and len(result.files) == 7
    assert result.classes == sorted(SHAPES) and result.spec == "five-class-cnn"
    assert result.train_accuracy == result.history[-1].train_accuracy
    saved = load_model(str(out / "model.pt"))
    assert result.model.card.to_dict() == saved.card.to_dict()
    state = result.model.module.state_dict()
    for name, value in saved.module.state_dict().items():
        assert torch.equal(state[name], value), name
    assert_shows(result, ["training curves, 1 epochs", "confusion matrix (rows: true class)"])
    written = names_and_bytes(out)
    assert result.save(tmp_path / "copy") == result.files
    assert names_and_bytes(tmp_path / "copy") == written
