"""Trust measures: Spearman, reach and rank against a brute-force ranking, path similarity of
a photo (1) and of an off-path render (flagged), the judge's top-1 / top-5."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convsight.analysis.trust import (
    OUTPUT,
    PathSimilarity,
    check_judge,
    evaluate,
    layer_means,
    path_layers,
    path_similarity,
    ranks,
    reach,
    render_values,
    spearman,
    transfer,
)
from convsight.analysis.trust_stream import (
    open_dataset,
    random_sample,
    stream_trust,
    trust_from_folder,
)
from convsight.data.images import load_image_tensor
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis import objectives as obj
from convsight.optvis.recipes import make_optimizer, make_param, row_generators
from convsight.optvis.render import render, render_settings
from convsight.optvis.settings import settings_for


def _net(size: int = 32) -> Model:
    """Convolutions ``0`` (8 channels), ``2`` (12), a max pool, ``5`` (16), a linear head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(16, 3))
    return Model.from_module(net, size, mean=0.5, std=0.25, labels=["a", "b", "c"], name="n")


def test_ranks_average_ties_and_spearman_matches_scipy():
    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        a = torch.randint(0, 6, (30,), generator=generator).float()
        b = torch.randint(0, 6, (30,), generator=generator).float()
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
    assert spearman(torch.ones(5), torch.arange(5.0)) == 0.0  # no order to compare
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)


def test_path_layers_are_the_convolutions_before_the_unit_evenly_thinned():
    model = _net()
    assert path_layers(model, "5") == ["0", "2"]
    assert path_layers(model, "6") == ["0", "2", "5"]
    assert path_layers(model, OUTPUT) == ["0", "2", "5"]
    assert path_layers(model, OUTPUT, limit=2) == ["0", "5"]  # first and last kept
    with pytest.raises(ConvsightError, match="unknown layer"):
        path_layers(model, "nope")


def test_reach_and_rank_match_a_brute_force_ranking():
    model = _net()
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(23, 3, 32, 32, generator=generator)
    renders = torch.rand(3, 3, 32, 32, generator=generator)
    objective = obj.channel("5", [1, 4, 7]) - 0.1 * obj.l1()
    values, _ = evaluate(model, objective, 3, images)  # 23 x 3, brute force
    batches = [(torch.arange(i, min(i + 5, 23)), images[i : i + 5]) for i in range(0, 23, 5)]
    units = stream_trust(model, objective, renders, "5", batches, 23, top_k=4, random=6)
    mine = render_values(model, objective, renders)
    for r, unit in enumerate(units):
        column = values[:, r]
        order = sorted(range(23), key=lambda i: (-float(column[i]), i))
        assert unit.top_images == order[:4]
        assert unit.reach.rank == 1 + sum(float(v) > float(mine[r]) for v in column)
        assert unit.reach.of == 23
        top_mean = float(column[order[:4]].double().mean())
        assert unit.reach.top_mean == pytest.approx(top_mean, rel=1e-5)
        assert unit.reach == reach(float(mine[r]), column, 4)
    # an image of the dataset as the render: it ranks just below the images above it
    same = stream_trust(model, objective, images[:3], "5", batches, 23, top_k=4, random=6)
    assert [u.reach.rank for u in same] == [
        1 + int((values[:, r] > values[r, r]).sum()) for r in range(3)
    ]


def test_a_zero_step_render_of_a_photo_follows_the_photos_path(samples):
    """A render started from a photo, no step taken, has the photo's path at every layer."""
    model = _net(48)
    photo = load_image_tensor(samples[3], model.card)
    others = torch.cat([load_image_tensor(p, model.card) for p in samples[10:16]])
    settings = settings_for("paper", steps=1, size=48)
    objective = obj.channel("5", [2])
    param = make_param(model, settings, row_generators([0]), photo)
    optimizer = make_optimizer(settings, param)
    made = render(model, objective, param, [], optimizer, 0, generators=row_generators([0]))
    assert torch.allclose(made.images, photo, atol=1e-5)
    found = path_similarity(model, "5", made.images, photo, others)
    assert found.layers == ["0", "2"]
    assert found.to_top == pytest.approx([1.0, 1.0], abs=1e-9)
    assert all(r < 1 for r in found.to_random) and not found.flagged
    robust = settings_for("robust", steps=1, size=48)
    fourier = make_param(model, robust, row_generators([0]), photo).pixels().detach()
    assert min(path_similarity(model, "5", fourier, photo, others).to_top) > 0.99


def test_flag_reads_the_last_third_of_the_layers():
    layers = ["a", "b", "c", "d"]
    assert PathSimilarity(layers, [0.9, 0.9, 0.2, 0.9], [0.1, 0.1, 0.1, 0.3]).decisive == [
        "c",
        "d",
    ]
    assert not PathSimilarity(layers, [0.1, 0.1, 0.5, 0.5], [0.9, 0.9, 0.4, 0.4]).flagged
    assert PathSimilarity(layers, [0.9, 0.9, 0.5, 0.3], [0.1, 0.1, 0.4, 0.5]).flagged
    assert not PathSimilarity([], [], []).flagged


def _vgg_head(shared) -> Model:
    """VGG16's first 16 layers (up to conv3_3, ``14``) with the shared weights, at 48 px."""
    state = torch.load(shared / "models" / "vgg16_hed_features.pt", weights_only=True)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"][:9])
    kept = {k.removeprefix("features."): v for k, v in state.items()}
    features.load_state_dict({k: v for k, v in kept.items() if int(k.split(".")[0]) < 16})
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return Model.from_module(features, 48, mean=mean, std=std, name="vgg-head")


@pytest.mark.slow
def test_an_off_path_render_is_flagged_and_the_plain_one_is_not(shared, samples):
    """conv3_3 channel 3 of VGG16: the plain render's last layers follow its top photos;
    the same objective plus a term pushing the last two layers below it from its top photos'
    statistics toward random photos' reaches it by another route, and is flagged."""
    model = _vgg_head(shared)
    pixels = torch.cat([load_image_tensor(p, model.card) for p in samples[::2]])
    starts = range(0, len(pixels), 26)
    batches = [(torch.arange(i, min(i + 26, len(pixels))), pixels[i : i + 26]) for i in starts]
    settings = settings_for("robust", steps=24)
    plain = obj.channel("14", [3])
    made = render_settings(model, plain, 1, settings, seeds=[3])
    (unit,) = stream_trust(model, plain, made.images, "14", batches, len(pixels))
    assert path_layers(model, "14") == ["0", "2", "5", "7", "10", "12"]
    assert not unit.flagged and unit.reach.rank == 1
    last = ["10", "12"]
    means = layer_means(model, pixels, last)
    sample = random_sample(len(pixels))
    off = plain
    for name in last:
        away = means[name][sample].mean(0) - means[name][unit.top_images].mean(0)
        off = off + obj.direction(name, (away / away.norm())[None])
    pushed = render_settings(model, off, 1, settings, seeds=[3])
    (moved,) = stream_trust(model, plain, pushed.images, "14", batches, len(pixels))
    assert moved.flagged and moved.path.decisive == last
    assert all([t < r for t, r in zip(moved.path.to_top, moved.path.to_random, strict=True)][-2:])


def _judge() -> Model:
    """Scores from the mean colour: class r (red), g (green), b (blue), and "none" (minus
    ten times the brightness)."""
    head = nn.Linear(3, 6, bias=False)
    with torch.no_grad():
        head.weight.copy_(
            torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0, 0.5, 0.5],
                          [-10, -10, -10]])
        )  # fmt: skip
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return Model.from_module(net, 8, labels=["r", "g", "b", "rg", "gb", "none"], name="judge")


def test_the_judge_says_top_1_and_top_5_on_a_known_answer():
    judge = _judge()
    red = torch.zeros(3, 3, 16, 16)
    red[:, 0] = 1.0  # scores r 1, g 0, b 0, rg 0.5, gb 0, none -10
    found = transfer(judge, red, [0, 2, 5])
    assert [(f["top1"], f["top5"]) for f in found] == [(True, True), (False, True), (False, False)]
    assert found[1]["judge_top1"] == "r" and found[0]["probability"] > found[1]["probability"]
    check_judge(judge, judge)
    with pytest.raises(ConvsightError, match="same labels in the same order"):
        check_judge(_net(), judge)


def test_a_folder_is_checked_and_streamed(tmp_path, samples):
    model = _net()
    with pytest.raises(ConvsightError, match="no images"):
        open_dataset(tmp_path, model)
    with pytest.raises(ConvsightError):
        open_dataset(tmp_path / "missing", model)
    (tmp_path / "a").mkdir()
    for p in samples[:5]:
        (tmp_path / "a" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    renders = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    found = trust_from_folder(model, obj.channel("5", [0, 1]), renders, "5", tmp_path, top_k=2)
    assert found.images == 5 and len(found.skipped) == 1 and found.layers == ["0", "2"]
    row = found.row(1)
    assert len(row["top_images"]) == 2 and all(n.startswith("a/") for n in row["top_images"])
    assert found.to_json()["decisive_layers"] == ["2"] and row["reach"]["of"] == 5
