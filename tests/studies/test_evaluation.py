"""The evaluate job: a built model and an EvaluationRequest in, an EvaluationResult out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from convsight.report import write_json
from convsight.studies.evaluation import EvaluationRequest, EvaluationResult, write_evaluation


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
