"""``explain``: the channels that carried one decision, on the tiny model and generated photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convsight.analysis.channel_relevance import channel_relevance, conditional_heatmaps
from convsight.data.images import load_image_tensor
from convsight.errors import ConvsightError
from convsight.studies.atlas import AtlasRequest, build_atlas
from convsight.studies.explain import ExplainRequest, explain, write_explain
from tests.conftest import assert_images_loaded, open_page
from tests.studies.views import check_views


@pytest.fixture
def photos(tmp_path):
    """A folder of five generated photos (the first is the one explained)."""
    (folder := tmp_path / "photos").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    for i, pixels in enumerate(noise):
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


def _request(photos, **changes):
    options = dict(image=photos / "photo0.png", layers=("features.0", "features.3"), top=3,
                   steps=2, size=32)  # fmt: skip
    options.update(changes)
    return ExplainRequest(**options)


def test_top_channels_are_channel_relevance_shares_by_magnitude(tiny, photos):
    result = explain(tiny, _request(photos, target="dog"))
    assert result.method == "crp" and "LRP composite" in result.method_reason
    first = result.layers[0].channels[0]
    check_views(result, 2 + 2 * 6, ["photo0.png", f"features.0 c{first.channel} share"])
    pixels = result.pixels.unsqueeze(0)
    reference = channel_relevance(tiny, pixels, "dog", ["features.0", "features.3"], "crp")
    assert result.relevance.score == pytest.approx(reference.score)
    data = result.to_json()
    assert data["method"] == "crp" and data["target"] == reference.target
    assert [p["label"] for p in data["prediction"]][:1] == [result.prediction[0][1]]
    for layer, entry in zip(result.layers, data["layers"], strict=True):
        share = reference.layers[layer.name].share
        chosen = [c["channel"] for c in entry["top"]]
        expected = share.abs().topk(3).indices.tolist()
        assert chosen == expected  # ordered by |share|, largest first
        for c in entry["top"]:
            assert c["share"] == pytest.approx(float(share[c["channel"]]), abs=1e-6)
        heat = conditional_heatmaps(tiny, pixels, layer.name, chosen, "dog", "crp")
        got = torch.stack([e.heatmap for e in layer.channels])
        torch.testing.assert_close(got, heat, atol=1e-6, rtol=1e-5)
        maps = reference.layers[layer.name].maps
        best, where = maps.max(0)
        expected_dictionary = torch.where(best > 0, where, -1)
        assert torch.equal(layer.dictionary, expected_dictionary)
        legend = entry["dictionary"]
        counted = sum(e["locations"] for e in legend["legend"])
        total = counted + legend["other_locations"] + legend["no_relevance_locations"]
        assert total == maps.shape[1] * maps.shape[2]
        assert all(c["picture"]["source"] == "rendered" for c in entry["top"])


def test_saved_page_loads_every_image_with_dataset_examples(tiny, photos, tmp_path, browser):
    out = tmp_path / "out"
    result = write_explain(tiny, _request(photos, dataset=photos, examples=2), out)
    data = json.loads((out / "explain.json").read_text())
    assert data == json.loads(json.dumps(result.to_json()))
    arrays = np.load(out / "explain.npz")
    assert arrays["layer1_heatmaps"].shape == (3, 32, 32)
    np.testing.assert_allclose(arrays["layer1_share"], result.layers[1].share.numpy())
    top = data["layers"][1]["top"][0]
    assert len(top["examples"]) == 2 and top["files"]["examples"]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in result.files)
    page, errors, _ = open_page(browser, (out / "explain.html").as_uri())
    assert_images_loaded(page)
    assert len(page.query_selector_all("img")) == 2 + 2 * (3 * 4 + 1)  # 2 rows of examples
    assert not errors, errors
    page.close()


def test_examples_by_relevance_for_the_class_beside_the_most_active(tiny, photos, tmp_path):
    """Each shown channel's examples by relevance for "dog" are the images with the largest
    gradient x activation of the channel summed over space (channel_relevance, image by
    image); JSON and npz carry both lists with their values."""
    out = tmp_path / "out"
    result = write_explain(tiny, _request(photos, target="dog", dataset=photos, examples=3), out)
    data = json.loads((out / "explain.json").read_text())
    arrays = np.load(out / "explain.npz")
    files = sorted(photos.glob("*.png"))
    images = [load_image_tensor(f, tiny.card) for f in files]
    for i, (layer, entry) in enumerate(zip(result.layers, data["layers"], strict=True)):
        each = torch.stack(
            [channel_relevance(tiny, x, "dog", [layer.name]).layers[layer.name].relevance
             for x in images]
        )  # fmt: skip
        for row, top in enumerate(entry["top"]):
            column = each[:, top["channel"]]
            order = column.argsort(descending=True)[:3].tolist()
            assert [e["image"] for e in top["relevant_examples"]] == [str(files[j]) for j in order]
            got = [e["value"] for e in top["relevant_examples"]]
            np.testing.assert_allclose(got, column[order].numpy(), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(arrays[f"layer{i}_relevant_values"][row], got)
            boxes = [e["box"] for e in top["relevant_examples"]]
            np.testing.assert_array_equal(arrays[f"layer{i}_relevant_boxes"][row], boxes)
            active = [e["value"] for e in top["examples"]]
            np.testing.assert_allclose(arrays[f"layer{i}_examples_values"][row], active)
            assert active == sorted(active, reverse=True) and len(active) == 3
            assert (out / top["files"]["relevant_examples"]).is_file()
    html = (out / "explain.html").read_text()
    assert "most active" in html and "most relevant for dog" in html
    plain = explain(tiny, _request(photos, target="dog"))
    assert plain.to_json()["layers"][0]["top"][0]["relevant_examples"] is None


def test_the_composite_chosen_is_the_one_crp_runs_with(tiny, photos):
    result = explain(tiny, _request(photos, target="dog", composite="epsilon_gamma_box"))
    pixels = result.pixels.unsqueeze(0)
    layers = ["features.0", "features.3"]
    gamma = channel_relevance(tiny, pixels, "dog", layers, "crp", "epsilon_gamma_box")
    flat = channel_relevance(tiny, pixels, "dog", layers, "crp")
    assert result.to_json()["composite"] == "epsilon_gamma_box"
    torch.testing.assert_close(result.relevance.heatmap, gamma.heatmap)
    assert not torch.allclose(gamma.heatmap, flat.heatmap)
    chosen = [e.channel for e in result.layers[1].channels]
    heat = conditional_heatmaps(
        tiny, pixels, "features.3", chosen, "dog", "crp", "epsilon_gamma_box"
    )
    torch.testing.assert_close(torch.stack([e.heatmap for e in result.layers[1].channels]), heat)
    with pytest.raises(ConvsightError, match="unknown LRP composite 'box'"):
        _request(photos, composite="box")


def test_captions_from_data_are_escaped(tiny, photos, tmp_path):
    tiny.card.labels[1] = "<script>alert(1)</script>"
    out = tmp_path / "out"
    write_explain(tiny, _request(photos, target="1", layers=("features.3",)), out)
    html = (out / "explain.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.slow
def test_atlas_pictures_are_reused_and_missing_ones_rendered(tiny, photos, tmp_path):
    atlas = tmp_path / "atlas"
    build_atlas(tiny, AtlasRequest(layers=["features.3"], channels="0-7", presets=["paper"],
                                   steps=2, out=atlas, show_progress=False))  # fmt: skip
    out = tmp_path / "out"
    result = write_explain(tiny, _request(photos, atlas=atlas, top=16), out)
    layer = result.to_json()["layers"][1]
    for entry in layer["top"]:
        inside = entry["channel"] < 8
        assert entry["picture"]["source"] == ("atlas" if inside else "rendered")
        if inside:
            assert entry["picture"]["atlas_file"] == f"features.3/img/c{entry['channel']}_paper.png"
            assert entry["atlas_page"] == f"features.3/c{entry['channel']}.html"
            saved = np.asarray(Image.open(out / entry["files"]["picture"]).convert("RGB"))
            original = np.asarray(Image.open(atlas / entry["picture"]["atlas_file"]).convert("RGB"))
            assert saved.shape[0] >= original.shape[0]
            step = saved.shape[0] // original.shape[0]
            np.testing.assert_array_equal(saved[::step, ::step][: len(original)], original)
    html = (out / "explain.html").read_text()
    assert 'href="../atlas/features.3/c0.html"' in html
    assert all(e["picture"]["source"] == "rendered" for e in result.to_json()["layers"][0]["top"])

    other = tiny
    with torch.no_grad():
        other.module.features[0].weight.add_(1.0)
    with pytest.raises(ConvsightError, match="atlas of another model"):
        explain(other, _request(photos, atlas=atlas))


def test_bad_requests_fail_before_any_work(tiny, photos, tmp_path):
    out = tmp_path / "out"
    cases = [
        (dict(layers=("features.9",)), "features.9"),
        (dict(image=photos / "missing.png"), "missing.png"),
        (dict(atlas=photos), "not a convsight atlas"),
        (dict(dataset=photos / "none"), "none"),
    ]
    for change, fragment in cases:
        with pytest.raises(ConvsightError, match=fragment):
            write_explain(tiny, _request(photos, **change), out)
        assert not out.exists()
    with pytest.raises(ConvsightError, match="--top"):
        _request(photos, top=0)


def test_a_model_that_pools_in_its_own_code_gets_gradient_x_activation_and_why():
    from convsight.models import Model
    from convsight.studies.explain import choose_method
    from tests.attribution.test_lrp import Pooled

    method, reason = choose_method(Model.from_module(Pooled("adaptive"), input_size=16))
    assert method == "grad_x_act"
    assert "pools in its own code (adaptive_avg_pool2d in Pooled.forward)" in reason
