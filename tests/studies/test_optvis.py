"""The maximize / classviz jobs: typed requests in, typed results out, JSON = to_json()."""

from __future__ import annotations

import pytest

from convsight.errors import ConvsightError
from convsight.optvis.settings import RenderSettings, settings_for
from convsight.report import write_json
from convsight.studies.optvis import (
    ClassvizRequest,
    ClassvizResult,
    MaximizeRequest,
    MaximizeResult,
    chosen_settings,
    classviz,
    maximize,
)


def same_json(path, data, tmp_path) -> bool:
    """``path`` holds exactly what writing ``data`` gives."""
    return write_json(tmp_path / "again.json", data).read_text() == path.read_text()


@pytest.mark.slow
def test_maximize_returns_what_it_wrote(tiny, tmp_path):
    out = tmp_path / "out"
    request = MaximizeRequest("features.3", "0-2", settings_for(steps=2, size=16), seed=3)
    result = maximize(tiny, request, out=out, show_progress=False)
    assert isinstance(result, MaximizeResult)
    assert result.channels == [0, 1, 2] and result.images.shape == (3, 3, 16, 16)
    assert result.values.shape == (3,) and result.settings.steps == 2 and result.seed == 3
    assert {p.name for p in result.files} == {
        "grid.png", "channel_0000.png", "channel_0001.png", "channel_0002.png",
        "images.npz", "summary.json",
    }  # fmt: skip
    assert same_json(out / "summary.json", result.to_json(), tmp_path)
    assert result.to_json()["dead_channels"] == result.dead_channels


def test_classviz_returns_what_it_wrote(tiny, tmp_path):
    out = tmp_path / "out"
    request = ClassvizRequest(["dog", 3], settings_for("robust", "class", steps=2, size=16))
    result = classviz(tiny, request, out=out, show_progress=False)
    assert isinstance(result, ClassvizResult)
    assert result.indices == [1, 3] and result.images.shape == (2, 3, 16, 16)
    assert [row["name"] for row in result.rows] == ["dog", "bird"]
    assert all((out / row["file"]).is_file() for row in result.rows)
    assert result.start is None and same_json(out / "summary.json", result.to_json(), tmp_path)


def test_requests_check_what_needs_no_model_when_made():
    with pytest.raises(ConvsightError, match="pass --yes"):
        MaximizeRequest("features.0", [0], settings_for(steps=200_000))
    assert MaximizeRequest("features.0", [0], settings_for(steps=200_000), yes=True)
    with pytest.raises(ConvsightError, match="--init must be"):
        ClassvizRequest([0], init="best")
    with pytest.raises(ConvsightError, match="no classes given"):
        ClassvizRequest([])


def test_bad_input_writes_nothing(tiny, tmp_path):
    with pytest.raises(ConvsightError):
        maximize(tiny, MaximizeRequest("features.3", "0-99"), out=tmp_path / "out")
    with pytest.raises(ConvsightError):
        classviz(tiny, ClassvizRequest(["wolf"]), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_chosen_settings_are_those_off_the_preset():
    assert chosen_settings(settings_for("paper", size=32)) == {"size"}
    assert chosen_settings(settings_for("robust", "class"), "class") == frozenset()
    assert chosen_settings(settings_for("robust", "class")) >= {"class_objective"}
    assert chosen_settings(RenderSettings(views=2)) == {"views"}  # preset "custom"
    request = MaximizeRequest("x", [0], settings_for(steps=4), chosen=frozenset({"size"}))
    assert request.given() == {"size"}  # what the user chose, when the caller knows it
