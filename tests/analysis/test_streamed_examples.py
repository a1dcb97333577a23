"""The streamed top examples: a running top-k per channel equal to sorting every image's
maximum, the same whatever the batches or the shards, with fixed-size summaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convsight.analysis.channel_relevance import channel_relevance
from convsight.analysis.streamed_examples import (
    SAMPLE,
    TopExamples,
    brute_force_top,
    stream_examples,
    stream_relevant_examples,
)
from convsight.models import Model


def streamed(maxima, positions, means, shard: int, batch: int, k: int) -> TopExamples:
    parts = []
    for start in range(0, len(maxima), shard):
        part = TopExamples.empty(maxima.shape[1], k)
        for first in range(start, min(start + shard, len(maxima)), batch):
            rows = slice(first, min(first + batch, start + shard, len(maxima)))
            index = torch.arange(rows.start, rows.stop)
            part.update(index, maxima[rows], positions[rows], means[rows])
        parts.append(part)
    return TopExamples.merge(parts)


@pytest.mark.parametrize(("shard", "batch"), [(5000, 16), (700, 64), (333, 7)])
def test_the_running_top_k_is_the_brute_force_ranking(shard, batch):
    torch.manual_seed(0)
    count, channels, k = 3000, 12, 9
    maxima = torch.randn(count, channels).round(decimals=1)  # many ties
    maxima[:, 0] = 0.0  # a dead channel: every image ties
    positions = torch.randint(0, 7, (count, channels, 2))
    means = torch.randn(count, channels)
    found = streamed(maxima, positions, means, shard, batch, k)
    values, images = brute_force_top(maxima, k)
    assert torch.equal(found.values, values) and torch.equal(found.images, images)
    assert found.images[0].tolist() == list(range(k))  # ties: the first images seen
    expected = positions.permute(1, 0, 2).gather(1, images[..., None].expand(-1, -1, 2))
    assert torch.equal(found.positions, expected)
    assert found.count == count
    torch.testing.assert_close(found.means(), means.mean(0), rtol=1e-5, atol=1e-6)
    sampled, sample = found.histogram_values()
    assert len(sampled) == SAMPLE and sampled.unique().numel() == SAMPLE
    assert torch.equal(sample, maxima[sampled].T)  # the sampled images' own maxima
    again = streamed(maxima, positions, means, 1000, 50, k).histogram_values()[0]
    assert torch.equal(sampled, again)  # the same sample, whatever the shards


def test_a_dataset_smaller_than_k_and_the_sample_keeps_every_image():
    maxima = torch.tensor([[1.0], [3.0], [2.0]])
    found = streamed(maxima, torch.zeros(3, 1, 2, dtype=torch.long), maxima, 2, 1, 5)
    assert found.images[0, :3].tolist() == [1, 2, 0]
    assert found.values[0, 3:].isinf().all() and found.images[0, 3:].tolist() == [-1, -1]
    sampled, sample = found.histogram_values()
    assert sampled.tolist() == [0, 1, 2] and sample.tolist() == [[1.0, 3.0, 2.0]]


SIDE = 6


def two_channel_net() -> Model:
    """Known weights: both channels of layer "0" copy the pixel, ReLU, then the spatial mean
    and a linear layer whose class 0 is channel 1 minus channel 0 (class 1: channel 0)."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        linear.weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, 0.0]]))
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    return Model.from_module(net, input_size=SIDE, channels=1, name="two-channel")


def batches_of(pixels: torch.Tensor, size: int):
    for first in range(0, len(pixels), size):
        rows = slice(first, min(first + size, len(pixels)))
        yield torch.arange(rows.start, rows.stop), pixels[rows]


@pytest.mark.parametrize("layer", ["0", "1"])
def test_the_relevance_ranking_is_the_brute_force_one_over_the_images(layer):
    torch.manual_seed(0)
    model, pixels = two_channel_net(), torch.rand(23, 1, SIDE, SIDE)
    found = stream_relevant_examples(model, batches_of(pixels, 5), [layer], 0, 4)[layer]
    each = [channel_relevance(model, p, 0, [layer]).layers[layer] for p in pixels]
    relevance = torch.stack([r.relevance for r in each])  # N x C, image by image
    values, images = brute_force_top(relevance, 4)
    assert torch.equal(found.images, images)
    torch.testing.assert_close(found.values, values, rtol=1e-5, atol=1e-6)
    for c in range(2):  # the place of the largest relevance in each image's map
        for row, image in enumerate(images[c].tolist()):
            where = each[image].maps[c].flatten().argmax()
            assert found.positions[c, row].tolist() == [where // SIDE, where % SIDE]


def test_relevance_for_a_class_ranks_otherwise_than_activation():
    """Channel 0 counts against class 0: the images it is most active on are its least
    relevant for class 0 (relevance -mean pixel / 1), the darkest images its most relevant."""
    torch.manual_seed(1)
    model = two_channel_net()
    pixels = torch.rand(12, 1, 1, 1).expand(-1, -1, SIDE, SIDE).clone()  # flat images
    pixels[:, :, 0, 0] = 0.0
    by_activation = stream_examples(model, batches_of(pixels, 4), ["0"], 3)["0"]
    by_relevance = stream_relevant_examples(model, batches_of(pixels, 4), ["0"], 0, 3)["0"]
    level = pixels[:, 0, 1, 1]
    assert by_activation.images[0].tolist() == level.argsort(descending=True)[:3].tolist()
    assert by_relevance.images[0].tolist() == level.argsort()[:3].tolist()
    torch.testing.assert_close(
        by_relevance.values[0], -level.sort().values[:3] * (SIDE * SIDE - 1) / SIDE**2
    )
    assert by_relevance.positions[0].tolist() == [[0, 0]] * 3  # the black pixel: 0, largest
    assert by_relevance.images[1].tolist() == by_activation.images[1].tolist()  # channel 1: +


def test_the_same_pass_gives_the_activation_ranking_of_stream_examples():
    torch.manual_seed(2)
    model = two_channel_net()
    with torch.no_grad():
        model.module[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
    pixels = torch.rand(17, 1, SIDE, SIDE) - 0.3
    expected = stream_examples(model, batches_of(pixels, 4), ["0", "1"], 5)
    active: dict[str, TopExamples] = {}
    stream_relevant_examples(model, batches_of(pixels, 4), ["0", "1"], 1, 5, active=active)
    for layer in ("0", "1"):
        for key in ("values", "images", "positions", "sample_images", "sample_maxima"):
            assert torch.equal(getattr(active[layer], key), getattr(expected[layer], key))
        assert torch.equal(active[layer].mean_sum, expected[layer].mean_sum)
