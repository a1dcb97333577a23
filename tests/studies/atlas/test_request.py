"""The atlas's typed request and result: atlas.json is the result's to_json()."""

import json

from convsight.studies.atlas import AtlasRequest, AtlasResult, build_atlas


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
