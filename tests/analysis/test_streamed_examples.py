"""The streamed top examples: a running top-k per channel equal to sorting every image's
maximum, the same whatever the batches or the shards, with fixed-size summaries."""

from __future__ import annotations

import pytest
import torch

from convsight.analysis.streamed_examples import SAMPLE, TopExamples, brute_force_top


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
