"""The projections job's result: shown inline, written only by ``save`` or a given folder."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from convsight.studies.projections import ProjectionsRequest, write_projections
from tests.studies.views import check_views, nothing_written, same_files, small_model


def test_result_shows_itself_and_saves_what_a_folder_gets(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    model = small_model()
    request = ProjectionsRequest("2", photos, [0, 3], top_k=2, show_progress=False)
    result = write_projections(model, request)
    assert result.files == [] and nothing_written(run)  # no folder: nothing written
    captions = ["c0 #1: ", "c0 #2 projection", "c3 #1: ", "c3 #2 projection"]
    check_views(result, 2 * 2 * 2, captions)  # a patch and its projection per example
    assert ("channels", "0, 3") in result.facts()
    saved = result.save(tmp_path / "later")
    direct = write_projections(model, replace(request, out=tmp_path / "direct"))
    same_files(saved, direct.files)
    assert [p.name for p in saved] == [
        "2-c0.png", "2-c3.png", "projections.npz", "projections.json",
    ]  # fmt: skip
