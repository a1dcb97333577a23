"""``convsight explain`` on the tiny model saved as a checkpoint, and a generated photo."""

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
from convsight.studies.atlas import AtlasRequest, build_atlas


@pytest.fixture
def setup(tmp_path):
    """A checkpoint of the (untrained) MNIST CNN, the model itself and a noise digit."""
    torch.manual_seed(0)
    model = load_model("mnist-cnn", stride=1, padding="valid")
    checkpoint = write_checkpoint(tmp_path / "model.pt", model.module, model.card)
    photo = tmp_path / "digit.png"
    pixels = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(photo)
    return checkpoint, photo, model


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="convsight")


def test_explain_writes_page_json_and_arrays(setup, tmp_path):
    checkpoint, photo, _ = setup
    out = tmp_path / "out"
    result = _run("explain", checkpoint, "--image", photo, "--layers", "features.3",
                  "--top", "2", "--steps", "2", "--size", "28", "--target", "7",
                  "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "explain.json").read_text())
    assert data["classes"] == [7] and data["method"] == "crp"
    assert [layer["name"] for layer in data["layers"]] == ["features.3"]
    shares = [abs(c["share"]) for c in data["layers"][0]["top"]]
    assert len(shares) == 2 and shares == sorted(shares, reverse=True)
    assert (out / "explain.html").is_file() and (out / "explain.npz").is_file()
    assert "wrote" in result.output


def test_bad_inputs_exit_2_in_one_sentence_and_write_nothing(setup, tmp_path):
    checkpoint, photo, other = setup
    with torch.no_grad():
        other.module.features[0].weight.add_(1.0)
    atlas = tmp_path / "atlas"
    build_atlas(other, AtlasRequest(layers=["features.0"], channels="0-1", presets=["paper"],
                                    steps=1, out=atlas, show_progress=False))  # fmt: skip
    out = tmp_path / "out"
    cases = [
        (["--layers", "features.9"], "features.9"),
        (["--image", tmp_path / "missing.png"], "missing.png"),
        (["--atlas", atlas], "atlas of another model"),
    ]
    for extra, fragment in cases:
        args = ["explain", checkpoint, "--image", photo, *extra, "--out", out]
        result = _run(*args)
        assert result.exit_code == 2, result.output
        assert fragment in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


def test_composite_is_chosen_recorded_and_an_unknown_one_exits_2_first(setup, tmp_path):
    checkpoint, photo, _ = setup
    out = tmp_path / "out"
    base = ["explain", checkpoint, "--image", photo, "--layers", "features.3", "--top", "2",
            "--steps", "1", "--size", "28", "--target", "7"]  # fmt: skip
    result = _run(*base, "--composite", "epsilon_gamma_box", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "explain.json").read_text())
    assert data["method"] == "crp" and data["composite"] == "epsilon_gamma_box"
    default = tmp_path / "default"
    assert _run(*base, "--out", default).exit_code == 0
    plain = json.loads((default / "explain.json").read_text())
    assert plain["composite"] == "epsilon_plus_flat" and plain["score"] == data["score"]
    assert plain["input_relevance"] != pytest.approx(data["input_relevance"])
    bad = tmp_path / "bad"
    result = _run(*base, "--composite", "gamma", "--out", bad)
    assert result.exit_code == 2, result.output
    assert "unknown LRP composite 'gamma'" in result.output and "epsilon_gamma_box" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not bad.exists()
