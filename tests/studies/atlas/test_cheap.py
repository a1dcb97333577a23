"""The atlas renders channels the cheap way by default (bf16 where native, each batch stopped
once flat) and says so in atlas-run.json; each channel's record has the steps it took."""

import json

from convsight.runtime import bf16_is_fast
from convsight.studies.atlas import AtlasRequest, build_atlas


def _atlas(model, out, **options):
    request = AtlasRequest(
        ["features.3"], out, channels="0-2", presets=["robust"], steps=24, size=32, batch=3,
        show_progress=False, **options,
    )  # fmt: skip
    build_atlas(model, request)
    run = json.loads((out / "atlas-run.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/records/c*.json"))]
    return run, records


def test_the_atlas_is_cheap_by_default_and_records_the_steps_taken(tiny, tmp_path):
    run, records = _atlas(tiny, tmp_path / "cheap")
    settings = run["render_settings"]["robust"]
    native = bf16_is_fast(tiny.device)
    assert settings["precision"] == ("bf16" if native else "fp32")
    assert settings["stop_when_flat"] == 16 and settings["coarse_steps"] == 0
    assert run["cheap"]["on"] is True
    assert ("no native bfloat16" in run["cheap"]["not_applied"]) is not native
    assert len(records) == 3 and all(17 <= r["steps"]["robust"] <= 24 for r in records)

    run, records = _atlas(tiny, tmp_path / "full", cheap=False)
    settings = run["render_settings"]["robust"]
    assert (settings["precision"], settings["stop_when_flat"], run["cheap"]) == ("fp32", 0, None)
    assert [r["steps"]["robust"] for r in records] == [24, 24, 24]
