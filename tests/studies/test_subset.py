"""make_subset: a typed request, checked when made; a typed result that is its manifest."""

import json

import numpy as np
import pytest
from PIL import Image

from convsight.errors import ConvsightError
from convsight.studies.subset import SubsetRequest, SubsetResult, make_subset


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({}, "give exactly one source"),
        ({"from_folder": "a", "from_fashion_mnist": "b"}, "give exactly one source"),
        ({"from_folder": "a", "test_fraction": 1.0}, "--test-fraction must be between 0 and 1"),
        ({"from_folder": "a", "per_class": 1}, "--per-class must be at least 2"),
    ],
)
def test_request_refuses_what_cannot_make_a_subset(tmp_path, fields, fragment):
    with pytest.raises(ConvsightError, match=fragment):
        SubsetRequest(tmp_path / "o", **fields)


def test_result_is_the_manifest(tmp_path):
    source = tmp_path / "src"
    for i, name in enumerate(("cat", "dog")):
        (source / name).mkdir(parents=True)
        for j in range(5):
            pixels = np.full((8, 8, 3), 40 * i + j, np.uint8)
            Image.fromarray(pixels).save(source / name / f"{j}.png")
    out = tmp_path / "subset"
    result = make_subset(SubsetRequest(out, from_folder=source, seed=3, show_progress=False))
    assert isinstance(result, SubsetResult)
    assert json.loads((out / "manifest.json").read_text()) == result.to_json()
    assert result.classes == ["cat", "dog"] and result.counts["cat"] == {"train": 4, "test": 1}
    assert result.to_json()["files"] == result.entries and len(result.entries) == 10
    assert sorted(result.files) == sorted([*out.rglob("*.png"), out / "manifest.json"])
