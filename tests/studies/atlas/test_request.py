"""The atlas's typed request and result: atlas.json is the result's to_json()."""

import json

import numpy as np
import pytest
from PIL import Image

from convsight.errors import ConvsightError
from convsight.studies.atlas import AtlasRequest, AtlasResult, build_atlas
from tests.studies.views import assert_shows


def test_the_plan_is_printed_by_default_only_with_all_layers():
    assert AtlasRequest(["all"]).planned and AtlasRequest(["ALL"]).planned
    assert not AtlasRequest(["features.0"]).planned
    assert not AtlasRequest(["all"], plan=False).planned
    assert AtlasRequest(["features.0"], plan=True).planned


def test_result_is_what_atlas_json_holds(tiny, tmp_path):
    out = tmp_path / "atlas"
    request = AtlasRequest(
        ["features.0"], out, channels="0-1", presets=["paper"], steps=2, show_progress=False,
        weights="w.pt", model_spec="tiny",
    )  # fmt: skip
    result = build_atlas(tiny, request)
    assert isinstance(result, AtlasResult)
    assert json.loads((out / "atlas.json").read_text()) == json.loads(json.dumps(result.to_json()))
    assert result.index == out / "index.html" and all(p.is_file() for p in result.files)
    assert result.channels == 2 and result.rendered_this_run == 2 and result.weights == "w.pt"
    assert json.loads((out / "atlas-run.json").read_text())["model_spec"] == "tiny"


@pytest.mark.slow
def test_atlas_shows_a_few_channels_of_each_layer_from_its_files(tiny, tmp_path):
    out = tmp_path / "atlas"
    request = AtlasRequest(
        ["features.0", "features.3"], out, channels="0-5", presets=["paper"], steps=2,
        show_progress=False,
    )  # fmt: skip
    result = build_atlas(tiny, request)
    tiles = result.tiles()
    captions = [t.caption.removesuffix(" (dead)") for t in tiles]
    assert captions == [f"{layer} c{c}" for layer in ("features.0", "features.3") for c in range(4)]
    assert_shows(result, [tiles[0].caption, tiles[-1].caption])
    picture = out / result.layers[0]["dir"] / "img" / "c0_paper.png"
    assert (tiles[0].image == np.asarray(Image.open(picture).convert("RGB"))).all()
    picture.unlink()  # a picture that is gone is left out
    assert len(result.tiles()) == 7
    facts = dict(result.facts())
    assert facts["channels"] == "12 (12 rendered this run)" and facts["model"] == "tiny"
    assert facts["features.0"].endswith("6 channels, " + f"{len(result.layers[0]['dead'])} dead")
    with pytest.raises(ConvsightError, match="written while it runs"):
        result.save(tmp_path / "elsewhere")
