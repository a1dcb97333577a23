"""The saliency job: a built model and a SaliencyRequest in, a SaliencyResult out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convsight.errors import ConvsightError
from convsight.report import write_json
from convsight.runtime import seed_everything
from convsight.studies.saliency import SaliencyRequest, SaliencyResult, write_saliency


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_the_result_holds_the_maps_and_is_the_json(tiny, photos, tmp_path):
    out = tmp_path / "out"
    request = SaliencyRequest(photos, targets=["dog"], methods=["saliency", "gradcam"])
    result = write_saliency(tiny, request, out=out, show_progress=False)
    assert isinstance(result, SaliencyResult)
    assert result.targets == [1, 1] and result.target_labels == ["dog", "dog"]
    assert {name: tuple(m.shape) for name, m in result.maps.items()} == {
        "saliency": (2, 32, 32),
        "gradcam": (2, 32, 32),
    }
    again = write_json(tmp_path / "again.json", result.to_json())
    assert again.read_text() == (out / "saliency.json").read_text()
    assert result.to_json()["model"] == "tiny"  # the card's name, unless model_name is given
    with np.load(out / "saliency.npz") as arrays:
        np.testing.assert_array_equal(arrays["gradcam_map"], result.maps["gradcam"].numpy())
    assert (out / "saliency.json") in result.files


@pytest.mark.slow
def test_seeded_leaves_the_generator_as_the_caller_set_it(tiny, photos, tmp_path):
    request = SaliencyRequest(photos[:1], methods=["smoothgrad"], smoothgrad_samples=2, seed=5)
    first = write_saliency(tiny, request, out=tmp_path / "a", show_progress=False)
    seed_everything(5)
    torch.rand(3)  # what loading a model would draw
    after_load = write_saliency(tiny, request, out=tmp_path / "b", show_progress=False, seeded=True)
    seed_everything(5)
    fresh = write_saliency(tiny, request, out=tmp_path / "c", show_progress=False, seeded=True)
    torch.testing.assert_close(fresh.maps["smoothgrad"], first.maps["smoothgrad"])
    assert not torch.equal(after_load.maps["smoothgrad"], first.maps["smoothgrad"])


def test_no_image_is_an_input_error_before_any_output(tiny, tmp_path):
    with pytest.raises(ConvsightError, match="no image given"):
        write_saliency(tiny, SaliencyRequest([]), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
