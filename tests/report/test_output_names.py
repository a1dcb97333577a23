"""File names from data (labels, image names, class folders, layer names) never reach outside
--out, and same-named inputs never overwrite each other's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard, build_seed
from convsight.optvis.settings import settings_for
from convsight.report import OUT_MARKER, write_checkpoint
from convsight.studies.atlas import AtlasRequest, build_atlas
from convsight.studies.optvis import ClassvizRequest, classviz
from convsight.studies.saliency import SaliencyRequest, write_saliency
from convsight.studies.subset import SubsetRequest, make_subset

runner = CliRunner()


def strict(path):
    def refuse(name):
        raise ValueError(name)

    return json.loads(path.read_text(), parse_constant=refuse)


def only_out_was_written(tmp_path, out, before):
    """Nothing appeared under tmp_path except out, its parents and what lies inside it."""
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in created if p != out and out not in p.parents and p not in out.parents]
    assert not outside, outside


def hostile_mnist(tmp_path, label):
    module, card = build_seed("mnist-cnn", {})
    card.labels = list(card.labels)
    card.labels[3] = label
    return write_checkpoint(tmp_path / "model" / "m.pt", module, card)


@pytest.mark.slow
def test_classviz_hostile_label_python_api(tmp_path):
    label = "x/../../../../ESCAPED"
    module, card = build_seed("mnist-cnn", {})
    card.labels = list(card.labels)
    card.labels[3] = label
    out = tmp_path / "a" / "b" / "out"
    before = {p for p in tmp_path.rglob("*")}
    request = ClassvizRequest([3], settings_for("robust", "class", steps=2))
    result = classviz(Model(module, card), request, out=out, show_progress=False).to_json()
    only_out_was_written(tmp_path, out, before)
    assert not (tmp_path / "ESCAPED.png").exists()
    files = [p.name for p in out.glob("class_*.png")]
    assert files == ["class_0003_x_.._.._.._.._ESCAPED.png"]
    assert result["classes"][0]["file"] == files[0] and result["classes"][0]["name"] == label
    strict(out / "summary.json")


@pytest.mark.slow
def test_classviz_hostile_label_cli(tmp_path):
    ckpt = hostile_mnist(tmp_path, "x/../../../ESCAPED")
    out = tmp_path / "one" / "two" / "out"
    before = {p for p in tmp_path.rglob("*")}
    result = runner.invoke(
        app,
        ["classviz", str(ckpt), "--classes", "3", "--steps", "2", "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    only_out_was_written(tmp_path, out, before)
    assert not (tmp_path / "one" / "ESCAPED.png").exists()
    assert len(list(out.glob("class_0003_*.png"))) == 1


class OddNames(nn.Module):
    """A model whose layer names are absolute paths and markup."""

    def __init__(self, escape: str) -> None:
        super().__init__()
        self.names = [escape, "<b>&'\"", "a/b"]
        self.add_module(self.names[0], nn.Conv2d(3, 4, 3, padding=1))
        self.add_module(self.names[1], nn.Conv2d(4, 4, 3, padding=1))
        self.add_module(self.names[2], nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = torch.relu(getattr(self, name)(x))
        return x.mean((2, 3))


def odd_model(escape: str) -> Model:
    card = ModelCard(
        name="odd",
        arch="test:odd",
        input_size=(16, 16),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        labels=["a", "b", "c"],
    )
    torch.manual_seed(0)
    return Model(OddNames(escape), card)


@pytest.mark.slow
def test_atlas_layer_names_stay_inside_out(tmp_path):
    target = tmp_path / "ESCAPED"
    if "." in str(target):
        pytest.skip("a module name cannot hold a dot")
    model = odd_model(str(target))  # an absolute path as a layer name
    data = tmp_path / "data" / "cls"
    data.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(data / f"im {i}<b>.png")
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    summary = build_atlas(
        model,
        AtlasRequest(
            model.module.names,
            out,
            dataset=tmp_path / "data",
            top_k=2,
            presets=["paper"],
            steps=2,
            show_progress=False,
        ),
    ).to_json()
    only_out_was_written(tmp_path, out, before)
    assert not target.exists()
    dirs = [layer["dir"] for layer in summary["layers"]]
    assert len(set(dirs)) == 3 and all("/" not in d and not d.startswith(".") for d in dirs)
    for d in dirs:
        assert (out / d / "index.html").is_file() and (out / d / "img" / "c0_paper.png").is_file()
    index = (out / "index.html").read_text()
    assert "<b>&" not in index  # the markup name is escaped in the page
    for path in out.rglob("*.json"):
        strict(path)


@pytest.mark.slow
def test_saliency_same_names_from_two_folders_and_odd_names(tiny, tmp_path):
    images = []
    for i, (folder, name) in enumerate([("a", "x.png"), ("b", "x.png"), ("c", "$(rm) <i>\n.png")]):
        path = tmp_path / "images" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(path)
        images.append(path)
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    write_saliency(tiny, SaliencyRequest(images, methods=["saliency"]), out, False)
    only_out_was_written(tmp_path, out, before)
    summary = strict(out / "saliency.json")
    panels = summary["panels"]
    assert [p["image"] for p in panels] == [str(p) for p in images]
    files = [p["file"] for p in panels]
    assert files[:2] == ["saliency_a_x.png", "saliency_b_x.png"]
    assert len(set(files)) == 3 and all((out / f).is_file() for f in files)
    assert "/" not in files[2] and "\n" not in files[2] and "<" not in files[2]
    # the same list gives the same names (deterministic)
    request = SaliencyRequest(images, methods=["saliency"])
    again = write_saliency(tiny, request, out=tmp_path / "o2", show_progress=False).files
    assert {p.name for p in again} == {p.name for p in out.iterdir()} - {OUT_MARKER}


def test_subset_class_folders_safe_and_clashes_refused(tmp_path):
    source = tmp_path / "src"
    for cls in ("red circle", "jack-o'-lantern", "a:b"):
        (source / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(source / cls / f"{i}.png")
    out = tmp_path / "subset"
    manifest = make_subset(SubsetRequest(out, from_folder=source, show_progress=False))
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert folders == ["a_b", "jack-o'-lantern", "red circle"]  # ordinary names kept
    assert manifest.classes == ["a:b", "jack-o'-lantern", "red circle"]
    (source / "a_b").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source / "a_b" / f"{i}.png")
    with pytest.raises(ConvsightError, match="would share the folder 'a_b'"):
        make_subset(SubsetRequest(tmp_path / "subset2", from_folder=source, show_progress=False))
    assert not (tmp_path / "subset2").exists()
