"""The evaluate job: a built model and an EvaluationRequest in, an EvaluationResult out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convsight.report import OUT_MARKER, write_json
from convsight.studies.evaluation import (
    EvaluationRequest,
    EvaluationResult,
    evaluate,
    write_evaluation,
)
from tests.studies.views import assert_shows, names_and_bytes


def test_the_result_is_the_json_and_its_table(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(folder / f"im{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    request = EvaluationRequest(
        folder, methods=["saliency"], metrics=["deletion"], step=256, model_name="my tiny"
    )
    out = tmp_path / "out"
    result = write_evaluation(tiny, request, out=out, show_progress=False)
    assert isinstance(result, EvaluationResult)
    assert len(result.images) == 3 and [s["path"] for s in result.skipped] == [
        str(folder / "bad.png")
    ]
    assert [row["method"] for row in result.table] == ["saliency"]
    assert "deletion_auc" in result.table[0] and "deletion_auc" in result.methods["saliency"]
    again = write_json(tmp_path / "again.json", result.to_json())
    assert again.read_text() == (out / "evaluation.json").read_text()
    assert result.to_json()["model"] == "my tiny"
    assert {p.name for p in result.files} == {"evaluation.json", "curves.png", "curves.npz"}


def _untimed(data: dict) -> dict:
    """The JSON without the seconds each method took."""
    for entry in data["methods"].values():
        entry.pop("seconds")
    return data


@pytest.mark.slow
def test_evaluate_writes_nothing_and_save_writes_what_a_run_writes(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
    request = EvaluationRequest(
        folder, methods=["saliency", "gradcam"], step=256, sanity_images=1, sanity_stages=2
    )
    monkeypatch.chdir(tmp_path)  # where the default folder would be
    result = evaluate(tiny, request, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"] and result.files == []

    saved = result.save(tmp_path / "saved")
    assert saved == result.files and all(p.is_file() for p in saved)
    write_evaluation(tiny, request, out=tmp_path / "ran", show_progress=False)
    mine, theirs = names_and_bytes(tmp_path / "saved"), names_and_bytes(tmp_path / "ran")
    names = {"evaluation.json", "curves.png", "curves.npz", "sanity.png", OUT_MARKER}
    assert set(mine) == set(theirs) == names
    for name in ("curves.png", "sanity.png", OUT_MARKER):
        assert mine[name] == theirs[name], name
    with (
        np.load(tmp_path / "saved" / "curves.npz") as a,
        np.load(tmp_path / "ran" / "curves.npz") as b,
    ):
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert _untimed(json.loads(mine["evaluation.json"])) == _untimed(
        json.loads(theirs["evaluation.json"])
    )


@pytest.mark.slow
def test_evaluation_shows_its_curves_and_a_line_per_method(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "a.png")
    request = EvaluationRequest(folder, methods=["saliency"], step=256, sanity_images=1)
    result = evaluate(tiny, request, show_progress=False)
    page = assert_shows(result, ["deletion and insertion curves", "model randomization"])
    tiles = result.tiles()
    assert len(tiles) == 2 and tiles[0].image.dtype == np.uint8 and tiles[0].image.ndim == 3
    facts = dict(result.facts())
    assert facts["model"] == "tiny" and facts["images"] == "1 (0 skipped)"
    assert facts["saliency"].startswith("deletion AUC 0.") and "insertion AUC" in facts["saliency"]
    assert "randomized r" in facts["saliency"] and "saliency" in page
    only = evaluate(
        tiny,
        EvaluationRequest(folder, methods=["saliency"], metrics=["insertion"], step=256),
        show_progress=False,
    )
    assert [t.caption for t in only.tiles()] == ["insertion curves"]
