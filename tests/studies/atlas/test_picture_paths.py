"""Path similarity of the atlas's pictures (issue 31): each record's ``trust.path`` equals
:func:`~convsight.analysis.trust.path_similarity` of the same images; a picture made to
follow random images rather than its top images is flagged and shown "off-path" in a real
browser; a resumed atlas measures the pictures an earlier run rendered without a path.

On ``silent_net`` layer ``2`` the only layer compared is convolution ``0``, whose channel
means are affine in the image: the channel means of a mean of images are the mean of their
channel means. So a picture that is the pixel mean of the random sample correlates 1 with
the random images (flagged unless its top images rank the channels the same way), and one
that is the pixel mean of its own top images correlates 1 with them (never flagged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convsight import Model
from convsight.analysis.trust import path_layers, path_similarity
from convsight.analysis.trust_stream import random_sample
from convsight.studies.atlas import AtlasRequest, build_atlas
from convsight.studies.atlas import rendering as atlas_rendering
from convsight.studies.atlas.inputs import AtlasJob, check_inputs
from convsight.studies.atlas.picture_paths import FROM_PNG, FROM_RENDER
from convsight.studies.atlas.rendering import load_npz
from convsight.studies.atlas.tasks import render_chunk
from tests.conftest import open_page
from tests.studies.atlas.test_trust import records, silent_net, write_photos

OFF, ON = 0, 3  # layer "2": pictures made the random sample's mean / its top images' mean


def made_pictures(job: AtlasJob, out: Path, chunk) -> None:
    """Replace the pictures of channels OFF and ON in a rendered ``chunk`` of layer 2."""
    data = job.dataset
    assert data is not None
    top = load_npz(out / "2" / "trust.npz")["mean_top_images"]
    wanted = {OFF: random_sample(len(data)), ON: top[ON].tolist()}
    for row, channel in enumerate(chunk.channels):
        if channel in wanted:
            chunk.renders["paper"].images[row] = data.load(wanted[channel]).mean(0)


def request(photos: Path, out: Path, size: int = 32, **extra) -> AtlasRequest:
    return AtlasRequest(["2"], out, dataset=photos, top_k=3, presets=["paper"], steps=1,
                        size=size, show_progress=False, **extra)  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, AtlasJob]:
    """An atlas of layer 2 whose OFF and ON pictures are made as the module says."""
    photos = write_photos(tmp_path_factory.mktemp("photos"))
    out = tmp_path_factory.mktemp("site")
    job = check_inputs(silent_net(), request(photos, out))

    def chunk_with_made_pictures(**kwargs):
        chunk = render_chunk(**kwargs)
        made_pictures(job, out, chunk)
        return chunk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atlas_rendering, "render_chunk", chunk_with_made_pictures)
        build_atlas(silent_net(), request(photos, out))
    return out, job


def same_path(found: dict, expected: dict) -> None:
    assert [r["layer"] for r in found["layers"]] == [r["layer"] for r in expected["layers"]]
    for key in ("to_top", "to_random"):
        got = [r[key] for r in found["layers"]]
        assert got == pytest.approx([r[key] for r in expected["layers"]], abs=1e-9)
    assert found["decisive"] == expected["decisive"] and found["flagged"] == expected["flagged"]


def test_each_record_holds_the_path_similarity_of_its_picture(made):
    out, job = made
    model, data = job.model, job.dataset
    assert data is not None
    channels = job.chosen["2"]
    chunk = render_chunk(model, "2", channels, job.settings, job.seed)  # the same renders
    made_pictures(job, out, chunk)
    top = load_npz(out / "2" / "trust.npz")["mean_top_images"]
    random = data.load(random_sample(len(data)))
    found = records(out, "2")
    for row, channel in enumerate(channels):
        if channel not in (OFF, ON):
            same = chunk.objectives["paper"][row]
            assert found[channel]["final_objectives"]["paper"] == same  # the same picture
        picture = chunk.renders["paper"].images[row]
        expected = path_similarity(model, "2", picture, data.load(top[channel].tolist()), random,
                                   layers=path_layers(model, "2"), resize_render=False)  # fmt: skip
        same_path(found[channel]["trust"]["path"], expected.to_json())
        assert found[channel]["trust"]["path_source"] == FROM_RENDER
    assert found[OFF]["trust"]["path"]["flagged"] is True
    assert found[OFF]["trust"]["path"]["layers"][0]["to_random"] == pytest.approx(1.0)
    assert found[ON]["trust"]["path"]["flagged"] is False
    assert found[ON]["trust"]["path"]["layers"][0]["to_top"] == pytest.approx(1.0)
    summary = json.loads((out / "atlas.json").read_text())
    flagged = sorted(c for c, r in found.items() if r["trust"]["path"]["flagged"])
    assert summary["layers"][0]["off_path"] == flagged


@pytest.mark.slow
def test_an_off_path_picture_is_marked_on_the_pages_in_a_browser(made, browser):
    out, _ = made
    layer = json.loads((out / "atlas.json").read_text())["layers"][0]
    flagged = layer["off_path"]
    page, errors, dialogs = open_page(browser, (out / "2" / "index.html").as_uri())
    assert f"{len(flagged)} off-path" in page.inner_text("#off-path-count")
    assert "off-path" in page.inner_text(f'#trust-table tr[data-channel="{OFF}"]')
    assert "off-path" not in page.inner_text(f'#trust-table tr[data-channel="{ON}"]')
    marked = page.eval_on_selector_all(".grid figure", "fs => fs.map(f => f.innerText)")
    assert [int(t.split()[0]) for t in marked if "off-path" in t] == flagged
    assert page.eval_on_selector_all("img", "i => i.every(x => x.naturalWidth > 0)")
    channel, more, _ = open_page(browser, (out / "2" / f"c{OFF}.html").as_uri())
    assert "Off-path" in channel.inner_text("#off-path")
    assert channel.inner_text("#path-table tr.decisive td") == "0 ★"
    assert "off-path" in channel.inner_text("#trust")
    calm, rest, _ = open_page(browser, (out / "2" / f"c{ON}.html").as_uri())
    assert calm.query_selector("#off-path") is None and "on path" in calm.inner_text("#trust")
    index, last, _ = open_page(browser, (out / "index.html").as_uri())
    assert index.inner_text('tr[data-layer="2"] .off-path-count') == str(len(flagged))
    assert index.inner_text('tr[data-layer="2"] .silent-count') == str(len(layer["silent"]))
    assert not errors and not more and not rest and not last and not dialogs


def deep_net() -> Model:
    """Convolutions ``0`` (12 channels), ``2`` (16) and ``4`` (8) with ReLUs: the path of
    layer 4 compares 0 and 2, the second one not affine in the image."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())  # fmt: skip
    return Model.from_module(net, input_size=32, resize=None)


def png_picture(folder: Path, channel: int) -> torch.Tensor:
    """The channel's picture from its PNG (24 px enlarged 5 times): 3 x 24 x 24."""
    pixels = np.asarray(Image.open(folder / "img" / f"c{channel}_paper.png").convert("RGB"))
    assert pixels.shape == (120, 120, 3)
    return torch.from_numpy(pixels[::5, ::5].copy()).permute(2, 0, 1).float() / 255


def test_fresh_and_resumed_pictures_are_measured_at_their_size(tmp_path):
    """Rendered at 24 px (the model's input is 32): each picture is compared at its size,
    from its pixels as rendered, or from its PNG when an earlier run left no path."""
    (tmp_path / "photos").mkdir()
    photos = write_photos(tmp_path / "photos")
    asked = AtlasRequest(["4"], tmp_path / "site", channels="0-2", dataset=photos, top_k=3,
                         presets=["paper"], steps=2, size=24, show_progress=False)  # fmt: skip
    out = tmp_path / "site" / "4"
    build_atlas(deep_net(), asked)
    job = check_inputs(deep_net(), asked)
    assert job.dataset is not None
    model, top = job.model, load_npz(out / "trust.npz")["mean_top_images"]
    random = job.dataset.load(random_sample(len(job.dataset)))

    def expected(picture: torch.Tensor, channel: int) -> dict:
        top_images = job.dataset.load(top[channel].tolist())
        return path_similarity(
            model, "4", picture, top_images, random, resize_render=False
        ).to_json()

    rendered = render_chunk(model, "4", [0, 1, 2], job.settings, job.seed).renders["paper"]
    for c, record in records(tmp_path / "site", "4").items():
        same_path(record["trust"]["path"], expected(rendered.images[c], c))
        assert record["trust"]["path"]["decisive"] == ["2"]
        assert record["trust"]["path_source"] == FROM_RENDER
        del record["trust"]["path"], record["trust"]["path_source"]  # as an earlier run left it
        (out / "records" / f"c{c}.json").write_text(json.dumps(record))
    before = (out / "img" / "c0_paper.png").read_bytes()
    assert build_atlas(deep_net(), asked).rendered_this_run == 0
    assert (out / "img" / "c0_paper.png").read_bytes() == before  # not rendered again
    for c, record in records(tmp_path / "site", "4").items():
        same_path(record["trust"]["path"], expected(png_picture(out, c), c))
        assert record["trust"]["path_source"] == FROM_PNG
    assert "Path through the network" in (out / "c1.html").read_text()
