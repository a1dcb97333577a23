"""The atlas's per-channel statistics of a streamed pass (:mod:`convsight.analysis.channel_
statistics`): maxima, top-k images by the channel mean and class relevance sums, the same
whatever the slices, equal to a brute-force computation."""

from __future__ import annotations

import torch

from convsight.analysis.channel_statistics import ChannelStatistics
from convsight.analysis.dataset_examples import ImageStats


def sliced(stats: ImageStats, relevance, predicted, cut: int, k: int) -> ChannelStatistics:
    """The statistics of slices of ``cut`` images (each fed a batch of 3), merged."""
    parts = []
    for start in range(0, len(stats.means), cut):
        part = ChannelStatistics.empty(stats.means.shape[1], k, classes=4)
        for first in range(start, min(start + cut, len(stats.means)), 3):
            rows = slice(first, min(first + 3, start + cut, len(stats.means)))
            batch = ImageStats(stats.maxima[rows], stats.positions[rows], stats.means[rows])
            index = torch.arange(rows.start, rows.stop)
            part.update(index, batch, relevance[rows], predicted[rows])
        parts.append(part)
    return ChannelStatistics.merge(parts)


def test_streamed_statistics_equal_a_brute_force_pass_whatever_the_slices():
    torch.manual_seed(0)
    count, channels, k = 40, 5, 4
    means = torch.randn(count, channels).round(decimals=1)  # ties: the first image wins
    maxima = means + torch.rand(count, channels)
    maxima[:, 2] = -maxima[:, 2].abs() - 0.1  # a channel never positive
    stats = ImageStats(maxima, torch.zeros(count, channels, 2, dtype=torch.long), means)
    relevance, predicted = torch.randn(count, channels), torch.randint(0, 3, (count,))
    order = [sorted(range(count), key=lambda i: (-float(means[i, c]), i))[:k] for c in range(5)]
    sums = torch.zeros(channels, 4, dtype=torch.float64)
    for i in range(count):
        sums[:, predicted[i]] += relevance[i].double()
    for cut in (40, 7, 13):
        found = sliced(stats, relevance, predicted, cut, k)
        assert found.count == count
        assert torch.equal(found.maximum, maxima.amax(0))
        assert bool(found.maximum[2] <= 0)
        assert found.mean_images.tolist() == order
        assert torch.equal(found.mean_values, means.T.gather(1, torch.tensor(order)))
        torch.testing.assert_close(found.class_sum, sums)
        assert found.class_count.tolist() == [*torch.bincount(predicted, minlength=3), 0]
