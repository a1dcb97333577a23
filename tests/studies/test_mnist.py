"""The activations job: a built model and an ActivationsRequest in, an ActivationsResult out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convsight.report import write_json
from convsight.studies.mnist import ActivationsRequest, ActivationsResult, write_activations


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
