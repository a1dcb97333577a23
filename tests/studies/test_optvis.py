"""The maximize / classviz jobs: typed requests in, typed results out, JSON = to_json()."""

from __future__ import annotations

import pytest
import torch

from convsight.errors import ConvsightError
from convsight.models import Model
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
from tests.studies.views import check_views, nothing_written, same_files, small_model


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


@pytest.mark.slow
def test_maximize_shows_itself_and_saves_what_a_folder_gets(tmp_path, monkeypatch):
    model = small_model()
    monkeypatch.chdir(tmp_path)
    request = MaximizeRequest("2", "0-2", settings_for(steps=2, size=16), seed=3)
    result = maximize(model, request, show_progress=False)
    assert result.files == [] and nothing_written(tmp_path)  # no folder: nothing written
    check_views(result, 3, ["2:0 ", "2:1 ", "2:2 ", "small", "preset robust, 2 steps"])
    saved = result.save(tmp_path / "later")
    assert result.files == saved and saved[0].parent == tmp_path / "later"
    direct = maximize(model, request, out=tmp_path / "direct", show_progress=False)
    same_files(saved, direct.files)


def test_classviz_shows_its_class_labels_and_saves_what_a_folder_gets(tmp_path, monkeypatch):
    model = small_model()
    monkeypatch.chdir(tmp_path)
    request = ClassvizRequest(["cow", 0], settings_for("robust", "class", steps=2), seed=1)
    result = classviz(model, request, show_progress=False)
    assert result.files == [] and nothing_written(tmp_path)
    html = check_views(result, 2, ["cow p=", "ant p=", "cow, ant"])
    assert html.index("cow p=") < html.index("ant p=")  # in the order asked
    saved = result.save(tmp_path / "later")
    direct = classviz(model, request, out=tmp_path / "direct", show_progress=False)
    same_files(saved, direct.files)
    assert "class_0002_cow.png" in [p.name for p in saved]


def _made(kind, **more):
    """A result made by hand: two rows of random pictures, the second one dead."""
    common = {
        "model": "m<b>",
        "weights": None,
        "objective": "mean",
        "images": torch.rand(2, 3, 8, 8),
        "values": torch.tensor([0.5, 0.0]),
        "dead": [1],
        "settings": settings_for(steps=2),
        "seed": 0,
        "device": "cpu",
        "seconds": 0.25,
    }
    return kind(**common, **more)


def test_captions_say_the_dead_rows_and_are_escaped(tmp_path):
    result = _made(MaximizeResult, layer="conv", channels=[4, 9])
    assert [t.caption for t in result.tiles()] == ["conv:4 0.5", "conv:9 (dead)"]
    assert ("dead channels", "9") in result.facts() and ("model", "m<b>") in result.facts()
    assert "m&lt;b&gt;" in result._repr_html_() and "m<b>" not in result._repr_html_()
    rows = [
        {"name": name, "probability": 0.25, "dead": dead, "file": f"{name}.png"}
        for name, dead in (("cat", False), ("dog", True))
    ]
    for row in rows:
        row["mean_of_images"] = 3
    start = torch.rand(2, 3, 8, 8)
    classes = _made(
        ClassvizResult, head="logits", init="mean", dataset="d", indices=[0, 1], rows=rows,
        start=start,
    )  # fmt: skip
    assert [t.caption for t in classes.tiles()] == ["cat p=0.25", "dog (dead)"]
    assert ("dead classes", "dog") in classes.facts() and ("start", "mean (d)") in classes.facts()
    written = classes.save(tmp_path / "out")
    assert [p.name for p in written] == [
        "grid.png", "cat.png", "dog.png", "images.npz", "start.png", "summary.json",
    ]  # fmt: skip


def _photos(samples, folder, count=6):
    """A folder of ``count`` sample photos, one in a sub-folder."""
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(samples[:count]):
        (folder / ("sub" if i == 0 else ".") / path.name).write_bytes(path.read_bytes())
    return folder


def test_maximize_measures_trust_with_a_dataset_and_says_why_not_without(samples, tmp_path):
    model = small_model()
    settings = settings_for(steps=2)
    plain = maximize(model, MaximizeRequest("2", [0, 1], settings), show_progress=False)
    assert plain.trust is None and [r["trust"] for r in plain.to_json()["channels"]] == [None] * 2
    assert (
        plain.to_json()["trust"]["dataset"] is None
        and "--dataset" in plain.to_json()["trust"]["why"]
    )
    assert "reach" not in plain.tiles()[0].caption
    data = _photos(samples, tmp_path / "photos")
    request = MaximizeRequest("2", [0, 1], settings, dataset=data)
    result = maximize(model, request, out=tmp_path / "out", show_progress=False)
    assert torch.equal(result.images, plain.images)  # the render is the same
    summary = result.to_json()
    assert same_json(tmp_path / "out" / "summary.json", summary, tmp_path)
    assert summary["trust"]["images"] == 6 and summary["trust"]["layers"] == ["0"]
    for unit, row in zip(result.trust.units, summary["channels"], strict=True):
        assert row["trust"]["reach"]["of"] == 6 and row["trust"]["flagged"] == unit.flagged
        assert [p["layer"] for p in row["trust"]["path"]["layers"]] == ["0"]
        assert len(row["trust"]["top_images"]) == 6  # top-k larger than the dataset
    assert "sub/" + samples[0].name in summary["channels"][0]["trust"]["top_images"]
    caption = result.tiles()[0].caption
    assert f"rank {result.trust.units[0].reach.rank}/6" in caption and "reach" in caption


def test_a_bad_dataset_fails_before_anything_is_written(tmp_path):
    model = small_model()
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "missing", "not found|does not exist|no such"),
                            (tmp_path / "empty", "no images")):  # fmt: skip
        request = MaximizeRequest("2", [0], settings_for(steps=2), dataset=folder)
        with pytest.raises(ConvsightError, match=message):
            maximize(model, request, out=tmp_path / "out", show_progress=False)
        request = ClassvizRequest(["cow"], settings_for("robust", "class", steps=2), dataset=folder)
        with pytest.raises(ConvsightError, match=message):
            classviz(model, request, out=tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_classviz_is_judged_and_measured(samples, tmp_path):
    model = small_model()
    data = _photos(samples, tmp_path / "photos", 4)
    request = ClassvizRequest(
        ["cow", "ant"], settings_for("robust", "class", steps=2), dataset=data
    )
    result = classviz(model, request, show_progress=False, judge=model)
    for row in result.to_json()["classes"]:
        judged = row["transfer"]
        assert judged["judge"] == "small" and judged["top5"]  # three classes: always in the top 5
        assert judged["top1"] == (judged["judge_top1"] == row["name"] == row["model_top1"])
        assert row["trust"]["reach"]["of"] == 4 and len(row["trust"]["path"]["layers"]) == 2
    assert "judge top-" in result.tiles()[0].caption and "rank " in result.tiles()[0].caption
    other = Model.from_module(small_model().module, 16, labels=["ant", "cow", "bee"])
    with pytest.raises(ConvsightError, match="same labels in the same order"):
        classviz(model, request, out=tmp_path / "out", show_progress=False, judge=other)
    assert not (tmp_path / "out").exists()
