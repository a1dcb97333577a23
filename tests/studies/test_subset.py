"""make_subset: a typed request, checked when made; a typed result that is its manifest."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convsight.errors import ConvsightError
from convsight.studies.subset import EXAMPLES_SHOWN, SubsetRequest, SubsetResult, make_subset
from tests.studies.views import assert_shows


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


def test_subset_shows_a_few_training_images_of_each_class(tmp_path):
    source = tmp_path / "src"
    for i, name in enumerate(("cat <b>", "dog")):
        (source / name).mkdir(parents=True)
        for j in range(8):
            Image.fromarray(np.full((8, 8, 3), 40 * i + j, np.uint8)).save(
                source / name / f"{j}.png"
            )
    out = tmp_path / "subset"
    result = make_subset(SubsetRequest(out, from_folder=source, seed=3, show_progress=False))
    page = assert_shows(result, ["cat <b>", "dog"])
    assert "cat <b>" not in page  # a label is data, shown escaped
    tiles = result.tiles()
    assert [t.caption for t in tiles] == ["cat <b>"] * EXAMPLES_SHOWN + ["dog"] * EXAMPLES_SHOWN
    first = next(e for e in result.entries if e["split"] == "train" and e["class"] == "dog")
    assert (tiles[EXAMPLES_SHOWN].image == np.asarray(Image.open(first["path"]))).all()
    Path(first["path"]).unlink()  # a picture that is gone is left out, the next one shown
    assert [t.caption for t in result.tiles()].count("dog") == EXAMPLES_SHOWN
    facts = dict(result.facts())
    assert facts["dog"] == "6 train, 2 test" and facts["left out"] == "0 unreadable, 0 missing"
    with pytest.raises(ConvsightError, match="written while it runs"):
        result.save(tmp_path / "elsewhere")
