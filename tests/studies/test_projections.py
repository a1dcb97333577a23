"""The projections job's result: shown inline, written only by ``save`` or a given folder; its
examples found in one streamed pass (only the top images decoded again), equal to ranking the
whole dataset held in memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import convsight.data.images as images_module
import convsight.studies.projections as projections_module
from convsight.analysis.dataset_examples import receptive_field, top_examples
from convsight.analysis.projections import project_examples
from convsight.data.images import load_readable_images
from convsight.models import load_model
from convsight.studies.atlas.inputs import dataset_images
from convsight.studies.projections import ProjectionsRequest, write_projections
from tests.studies.views import check_views, nothing_written, same_files, small_model


def test_result_shows_itself_and_saves_what_a_folder_gets(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    model = small_model()
    request = ProjectionsRequest("2", photos, [0, 3], top_k=2, show_progress=False)
    result = write_projections(model, request)
    assert result.files == [] and nothing_written(run)  # no folder: nothing written
    captions = ["c0 #1: ", "c0 #2 projection", "c3 #1: ", "c3 #2 projection"]
    check_views(result, 2 * 2 * 2, captions)  # a patch and its projection per example
    assert ("channels", "0, 3") in result.facts()
    saved = result.save(tmp_path / "later")
    direct = write_projections(model, replace(request, out=tmp_path / "direct"))
    same_files(saved, direct.files)
    assert [p.name for p in saved] == [
        "2-c0.png", "2-c3.png", "projections.npz", "projections.json",
    ]  # fmt: skip


@pytest.fixture
def photos(tmp_path, samples):
    """Seven sample photos (two in a class folder) and a text file named .jpg."""
    (tmp_path / "cls").mkdir()
    for i, photo in enumerate(samples[:7]):
        target = tmp_path / ("cls" if i < 2 else ".") / photo.name
        target.write_bytes(photo.read_bytes())
    (tmp_path / "broken.jpg").write_text("not a photo")
    return tmp_path


def test_streamed_examples_and_projections_equal_the_held_dataset(photos, monkeypatch):
    model = load_model("mnist-cnn")
    decoded: list = []
    real = images_module.load_image
    monkeypatch.setattr(images_module, "load_image", lambda p: decoded.append(p) or real(p))
    request = ProjectionsRequest("features.0", photos, "1,3,4", top_k=4, show_progress=False)
    result = write_projections(model, request)
    assert len(decoded) == 8 + 3 * 4  # each file tried once in the pass, then the top images
    assert result.dataset_size == 7 and [s["path"] for s in result.skipped_images] == [
        str(photos / "broken.jpg")
    ]
    pixels, kept, _ = load_readable_images(dataset_images(photos), model.card)
    held = top_examples(model, pixels, "features.0", [1, 3, 4], 4)
    for name in ("top_images", "top_values", "top_positions", "max_per_image", "mean_per_image"):
        assert torch.equal(getattr(result.examples, name), getattr(held, name)), name
    assert torch.equal(result.examples.sample_images, torch.arange(7))
    found = project_examples(model, pixels, held, receptive_field(model, "features.0"))
    for ours, theirs in zip(result.projections, found, strict=True):
        assert torch.equal(ours.projections.maps, theirs.projections.maps)
        assert all(torch.equal(a, b) for a, b in zip(ours.patches, theirs.patches, strict=True))
    names = [e["image"] for row in result.channels for e in row["examples"]]
    assert set(names) <= {str(p.relative_to(photos)) for p in kept}


def test_top_k_beyond_the_dataset_keeps_every_image(photos, monkeypatch):
    monkeypatch.setattr(projections_module, "BATCH_SIZE", 3)  # several batches, one partial
    request = ProjectionsRequest("features.3", photos, [0, 2], top_k=20, show_progress=False)
    result = write_projections(load_model("mnist-cnn"), request)
    assert result.examples.top_images.shape == (2, 7)
    assert all(sorted(row.tolist()) == list(range(7)) for row in result.examples.top_images)
    values = result.examples.top_values
    assert (values[:, :-1] >= values[:, 1:]).all() and torch.isfinite(values).all()
