"""The activations job: a built model and an ActivationsRequest in, an ActivationsResult out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convsight.report import write_json
from convsight.studies.mnist import ActivationsRequest, ActivationsResult, write_activations
from tests.studies.views import check_views, nothing_written, same_files, small_model


@pytest.mark.slow
def test_the_result_holds_the_maps_and_is_the_json(tiny, tmp_path):
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    out = tmp_path / "out"
    request = ActivationsRequest(image=image, layers=["features.0", "features.3"], seed=2)
    result = write_activations(tiny, request, out)
    assert isinstance(result, ActivationsResult)
    assert result.pixels.shape == (1, 3, 32, 32)
    assert tuple(result.maps["features.3"].shape) == (1, 16, 16, 16)
    assert [row["layer"] for row in result.layers] == ["features.0", "features.3"]
    again = write_json(tmp_path / "again.json", result.to_json())
    assert again.read_text() == (out / "activations.json").read_text()
    assert result.to_json()["settings"] == {"max_channels": 64, "seed": 2}
    assert {p.name for p in result.files} >= {"input.png", "features.3.png", "activations.npz"}


@pytest.mark.slow
def test_activations_show_themselves_and_save_what_a_folder_gets(tmp_path, monkeypatch):
    model = small_model()
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    request = ActivationsRequest(image=image, layers=["0", "2"], max_channels=5)
    result = write_activations(model, request)
    assert result.files == [] and nothing_written(run)  # no folder: nothing written
    captions = ["input", "0:0", "0:3", "2:0", "2:4", "small"]
    html = check_views(result, 1 + 4 + 5, captions)  # at most max_channels a layer
    assert "2:5" not in html and ("layers", "0 4x16x16, 2 6x16x16") in result.facts()
    shown = [t.image for t in result.tiles()[1:]]
    assert all(float(t.min()) >= 0 and float(t.max()) <= 1 for t in shown)
    saved = result.save(tmp_path / "later")
    direct = write_activations(model, request, tmp_path / "direct")
    same_files(saved, direct.files)
    assert [p.name for p in saved] == [
        "input.png", "0.png", "2.png", "activations.npz", "activations.json",
    ]  # fmt: skip
