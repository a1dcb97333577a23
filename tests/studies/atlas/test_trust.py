"""How far to trust an atlas picture (issues 30 and 31): silent channels, reach and rank
against a brute-force pass, the classes a channel carries relevance for, and the layer page's
trust column in a real browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convsight import Model
from convsight.analysis.channel_relevance import channel_relevance
from convsight.analysis.dataset_examples import layer_stats
from convsight.data.images import load_readable_images
from convsight.studies.atlas import AtlasRequest, build_atlas
from convsight.studies.atlas.trust import TRUST_FILE, render_rank
from tests.conftest import open_page

SILENT = [1, 4]  # the channels whose bias is -100


def silent_net() -> Model:
    """Conv (6 channels, 1 and 4 pushed to -100), ReLU, pooling and 3 class scores."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias[SILENT] = -100.0
    head = nn.Linear(5, 3)
    with torch.no_grad():
        head.weight.mul_(40.0)  # predictions that differ between the images
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)  # fmt: skip
    return Model.from_module(net, input_size=32, resize=None, labels=["ant", "bee", "cow"])


def write_photos(folder: Path) -> Path:
    """14 photos of 32 px into ``folder``: the 8 corners of the colour cube (strong
    responses), then noise."""
    rng = np.random.default_rng(1)
    for i in range(14):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        if i < 8:
            pixels[...] = [255 * (i >> b & 1) for b in range(3)]
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def site(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    request = AtlasRequest(["0", "2"], out, dataset=photos, top_k=3, presets=["paper"],
                           steps=1, show_progress=False)  # fmt: skip
    build_atlas(silent_net(), request)
    return out


def records(site: Path, layer: str) -> dict[int, dict]:
    files = (site / layer / "records").glob("c*.json")
    return {int(f.stem[1:]): json.loads(f.read_text()) for f in files}


def brute(photos: Path, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's spatial maxima and means (N x C) at ``layer``."""
    pixels, _, _ = load_readable_images(sorted(photos.iterdir()), silent_net().card)
    stats = layer_stats(silent_net(), pixels, [layer])[layer]
    return stats.maxima, stats.means


def test_silent_channels_are_exactly_those_never_positive(site, photos):
    summary = json.loads((site / "atlas.json").read_text())
    layer = next(row for row in summary["layers"] if row["name"] == "0")
    assert layer["silent"] == SILENT
    maxima, _ = brute(photos, "0")
    for c, record in records(site, "0").items():
        assert record["trust"]["silent"] is (c in SILENT)
        assert record["trust"]["maximum"] == pytest.approx(float(maxima[:, c].max()), abs=1e-5)
    page = (site / "0" / "index.html").read_text()
    assert "2 silent on the data" in page
    assert page.count('class="silent"') == len(SILENT)
    assert "Silent on the data" in (site / "0" / "c4.html").read_text()
    assert "Silent on the data" not in (site / "0" / "c0.html").read_text()
    after_relu = next(row for row in summary["layers"] if row["name"] == "2")
    assert after_relu["silent"] is not None  # known: a dataset was given


def test_reach_and_rank_equal_a_brute_force_pass(site, photos):
    _, means = brute(photos, "0")
    ranks = []
    for c, record in records(site, "0").items():
        value = record["final_objectives"]["paper"]
        found = record["trust"]["presets"]["paper"]
        natural = means[:, c].sort(descending=True).values[:3].mean()
        assert found["rank"] == 1 + int((means[:, c] > value).sum())
        assert found["rank_exact"]
        if natural > 0:
            assert found["reach"] == pytest.approx(value / float(natural), rel=1e-5)
        else:
            assert found["reach"] is None
        ranks.append((found["rank"], found["reach"]))
    assert record["trust"]["images"] == 14
    assert max(rank for rank, _ in ranks) > 3  # some below the kept top 3: from every image
    assert any(reach is not None for _, reach in ranks)


def test_the_final_objective_is_the_channel_mean_on_the_picture():
    from convsight.optvis.render import render_channels
    from convsight.studies.atlas.tasks import final_objectives

    model = silent_net()
    result = render_channels(model, "2", [0, 3], preset="paper", steps=2, size=32)
    found = final_objectives(model, "2", [0, 3], result)
    with torch.no_grad():
        act = model.module[:3](model.normalize(result.images))
    expected = [float(act[0, 0].mean()), float(act[1, 3].mean())]
    assert found == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_rank_beyond_the_top_k_comes_from_the_sample():
    top = torch.tensor([9.0, 8.0])
    assert render_rank(10.0, top, torch.tensor([9.0, 8.0, 1.0]), 3) == (1, True)
    assert render_rank(8.5, top, torch.tensor([9.0, 8.0, 1.0]), 3) == (2, True)
    assert render_rank(0.5, top, torch.tensor([9.0, 8.0, 1.0]), 3) == (4, True)  # all sampled
    # 100 images, 4 sampled, 2 of them above: about half the images are above
    assert render_rank(0.5, top, torch.tensor([9.0, 8.0, 0.0, 0.1]), 100) == (51, False)


def test_class_relevance_equals_a_per_image_computation(site, photos):
    model = silent_net()
    pixels, _, _ = load_readable_images(sorted(photos.iterdir()), model.card)
    sums, counts = torch.zeros(5, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    for image in pixels:
        found = channel_relevance(model, image, None, ["2"])
        (k,) = found.classes
        sums[:, k] += found.layers["2"].relevance.double()
        counts[k] += 1
    arrays = np.load(site / "2" / TRUST_FILE)
    assert torch.equal(torch.from_numpy(arrays["class_images"]), counts)
    torch.testing.assert_close(
        torch.from_numpy(arrays["class_relevance_sum"]), sums, rtol=1e-4, atol=1e-6
    )
    assert int((counts > 0).sum()) > 1  # the images are predicted as more than one class
    for c, record in records(site, "2").items():
        listed = record["relevant_classes"]["classes"]
        seen = (counts > 0).nonzero().flatten().tolist()
        best = sorted(seen, key=lambda k: -float(sums[c, k] / counts[k]))[:5]
        assert [row["class"] for row in listed] == best
        assert [row["label"] for row in listed] == [model.card.labels[k] for k in best]
        assert [row["images"] for row in listed] == [int(counts[k]) for k in best]
    assert "Classes it carries most relevance for" in (site / "2" / "c0.html").read_text()


def test_without_a_dataset_or_class_scores_nothing_is_claimed(photos, tmp_path):
    model = silent_net()
    build_atlas(model, AtlasRequest(["0"], tmp_path / "none", presets=["paper"], steps=2,
                                    show_progress=False))  # fmt: skip
    summary = json.loads((tmp_path / "none" / "atlas.json").read_text())
    assert summary["layers"][0]["silent"] is None
    record = json.loads((tmp_path / "none" / "0" / "records" / "c1.json").read_text())
    assert record["trust"]["silent"] is None and "unknown" in record["trust"]["note"]
    assert record["trust"]["path"] is None and summary["layers"][0]["off_path"] is None
    assert "silent-count" not in (tmp_path / "none" / "0" / "index.html").read_text()
    features = Model.from_module(silent_net().module[:2], input_size=32, resize=None)
    request = AtlasRequest(["0"], tmp_path / "features", dataset=photos, top_k=3,
                           presets=["paper"], steps=2, show_progress=False)  # fmt: skip
    build_atlas(features, request)
    record = json.loads((tmp_path / "features" / "0" / "records" / "c1.json").read_text())
    assert record["relevant_classes"] == {"classes": [], "note": "the model gives no class scores"}
    assert record["trust"]["silent"] is True


def test_path_flag_shows_as_off_path(site):
    from convsight.studies.atlas.trust import layer_trust

    rows = [{"index": 3, "trust": {"silent": False, "path": {"flagged": True}}}]
    assert layer_trust(rows, "paper")["channels"][0]["off_path"] is True


@pytest.mark.slow
def test_the_layer_page_sorts_its_trust_column_in_a_browser(site, browser):
    page, errors, dialogs = open_page(browser, (site / "0" / "index.html").as_uri())
    assert "2 silent on the data" in page.inner_text("#silent-count")
    assert page.eval_on_selector_all("#trust-table tbody tr", "r => r.length") == 6

    def column(key):
        return page.eval_on_selector_all(
            "#trust-table tbody tr", f"rows => rows.map(r => r.dataset.{key})"
        )

    page.click("#trust-table button[data-key=maximum]")
    maxima = [float(v) for v in column("maximum")]
    assert maxima == sorted(maxima, reverse=True)
    assert [int(c) for c in column("channel")][-2:] in (SILENT, SILENT[::-1])
    page.click("#trust-table button[data-key=maximum]")
    assert [float(v) for v in column("maximum")] == sorted(maxima)
    page.click("#trust-table button[data-key=rank]")
    ranks = [int(v) for v in column("rank")]
    assert ranks == sorted(ranks, reverse=True)
    assert not errors and not dialogs


def test_class_relevance_can_be_switched_off(photos, tmp_path):
    request = AtlasRequest(["2"], tmp_path / "off", channels="0", dataset=photos, top_k=3,
                           presets=["paper"], steps=1, show_progress=False,
                           class_relevance=False)  # fmt: skip
    build_atlas(silent_net(), request)
    record = json.loads((tmp_path / "off" / "2" / "records" / "c0.json").read_text())
    assert record["relevant_classes"]["classes"] == []
    assert "not computed" in record["relevant_classes"]["note"]
    assert "class_relevance_sum" not in np.load(tmp_path / "off" / "2" / TRUST_FILE)
    assert record["trust"]["silent"] is False  # the rest of the trust is still there


def test_the_cli_passes_the_class_relevance_switch(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import convsight.studies.atlas as atlas
    from convsight.cli import app

    seen = []
    monkeypatch.setattr(atlas, "build_atlas", lambda model, request: seen.append(request) or 1 / 0)
    for flag in ("--no-class-relevance", "--class-relevance"):
        CliRunner().invoke(app, ["atlas", "mnist-cnn", "--layers", "features.0", flag,
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert [r.class_relevance for r in seen] == [False, True]
