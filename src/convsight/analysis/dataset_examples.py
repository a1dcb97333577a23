"""Dataset examples: the images (and the patch in them) that activate a channel most."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from convsight.layers import check_layers, forward_to
from convsight.models import Model
from convsight.progress import progress_bar


@dataclass
class ReceptiveField:
    """Where a unit of a layer looks in the input: a box around (y, x), clipped to the image."""

    size: tuple[int, int]  # rows, columns of input pixels one unit sees
    stride: tuple[float, float]  # input pixels between neighbouring units
    offset: tuple[float, float]  # input position of unit (0, 0)'s centre
    input_size: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels of unit (y, x), clipped."""
        cy = self.offset[0] + y * self.stride[0]
        cx = self.offset[1] + x * self.stride[1]
        top = int(round(cy - self.size[0] / 2))
        left = int(round(cx - self.size[1] / 2))
        h, w = self.input_size
        return max(top, 0), max(left, 0), min(top + self.size[0], h), min(left + self.size[1], w)


def _measure_field(model: Model, layer: str, size: tuple[int, int], trials: int):
    """Back-propagate from the middle unit of ``layer`` on random inputs of ``size``: the rows
    and columns of input pixels it reaches, and the layer's map size. The inputs are drawn as
    one batch but run one at a time (the same pixels reached; the memory of one input)."""
    inputs = torch.randn(trials, model.card.channels, *size, device=model.device)
    seen = torch.zeros(size, dtype=torch.bool, device=model.device)
    ly = lx = 0
    for one in inputs.split(1):
        x = one.clone().requires_grad_(True)
        out = forward_to(model.module, x, [layer])[layer]
        ly, lx = out.shape[-2], out.shape[-1]
        out[:, :, ly // 2, lx // 2].sum().backward()
        assert x.grad is not None  # filled by backward() just above
        seen |= x.grad.abs().sum((0, 1)) > 0
        del out, x
    return seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten(), (ly, lx)


def receptive_field(model: Model, layer: str, trials: int = 4) -> ReceptiveField:
    """Measure the receptive field of ``layer`` by back-propagating from one unit in its middle.

    Input pixels with a non-zero gradient (over a few random inputs) are the unit's field. A
    field that reaches the border of the model's input size is measured again on inputs two and
    four times as large (a convolutional stack takes them), so a field larger than the image is
    not cut short; where the larger input fails, the cut field is kept.
    """
    check_layers(model.module, [layer])
    h, w = model.card.input_size
    scale = 1
    rows, cols, (ly, lx) = _measure_field(model, layer, (h, w), trials)
    for factor in (2, 4):
        touches = len(rows) and (rows[0] == 0 or rows[-1] == scale * h - 1 or cols[0] == 0
                                 or cols[-1] == scale * w - 1)  # fmt: skip
        if not touches:
            break
        try:
            bigger = _measure_field(model, layer, (factor * h, factor * w), trials)
        except (RuntimeError, ValueError):  # not fully convolutional up to the layer
            break
        scale, (rows, cols, (ly, lx)) = factor, bigger
    if len(rows) == 0:  # a unit that no input reaches (dead on random input): whole image
        return ReceptiveField((h, w), (h / ly, w / lx), (h / 2, w / 2), (h, w))
    size = (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
    stride = (scale * h / ly, scale * w / lx)
    centre = ((rows[0] + rows[-1]).item() / 2 + 0.5, (cols[0] + cols[-1]).item() / 2 + 0.5)
    offset = (centre[0] - (ly // 2) * stride[0], centre[1] - (lx // 2) * stride[1])
    return ReceptiveField(size, stride, offset, (h, w))


@dataclass
class ChannelExamples:
    """Per channel: the top-k images by spatial-max activation, where, and every image's value."""

    layer: str
    channels: list[int]
    top_images: torch.Tensor  # channels x k, dataset indices
    top_values: torch.Tensor  # channels x k
    top_positions: torch.Tensor  # channels x k x 2, (y, x) of the maximum in the layer's map
    max_per_image: torch.Tensor  # channels x N, spatial max of each image
    mean_per_image: torch.Tensor  # channels x N, spatial mean of each image
    sample_images: torch.Tensor | None = None
    """The dataset index of each column of ``max_per_image`` and ``mean_per_image`` when they
    hold a sample of the images (a streamed pass); None: every image, in order."""


@dataclass
class ImageStats:
    """Per image and channel of a layer: the spatial maximum, where it is, and the mean."""

    maxima: torch.Tensor  # N x C
    positions: torch.Tensor  # N x C x 2, (y, x) of the maximum in the layer's map
    means: torch.Tensor  # N x C

    @staticmethod
    def join(parts: Sequence[ImageStats]) -> ImageStats:
        """The statistics of consecutive slices of a dataset, in order, as one."""
        return ImageStats(
            torch.cat([p.maxima for p in parts]),
            torch.cat([p.positions for p in parts]),
            torch.cat([p.means for p in parts]),
        )


def channel_stats(out: torch.Tensor, channels: Sequence[int] | None = None) -> ImageStats:
    """A layer's output (N x C x H x W) reduced per image and channel: the spatial maximum,
    where it is and the spatial mean (``channels``: only those)."""
    out = out.float() if channels is None else out[:, list(channels)].float()
    flat = out.flatten(2)
    value, index = flat.max(2)
    where = torch.stack((index // out.shape[-1], index % out.shape[-1]), -1)
    return ImageStats(value.cpu(), where.cpu(), flat.mean(2).cpu())


@torch.no_grad()
def layer_stats(
    model: Model,
    pixels: torch.Tensor,
    layers: Sequence[str],
    channels: Sequence[int] | None = None,
    batch_size: int = 16,
    start: int = 0,
    stop: int | None = None,
    bar: Callable[[int], None] | None = None,
) -> dict[str, ImageStats]:
    """Run ``pixels[start:stop]`` as far as the last of ``layers`` (one pass for them all),
    ``batch_size`` images at a time counted from ``start`` (a slice starting at a multiple of
    ``batch_size`` sees the batches of the whole pass); each layer's statistics are taken the
    moment it has run. ``bar`` is told how many images each batch held."""
    stop = len(pixels) if stop is None else stop
    found: dict[str, list[ImageStats]] = {name: [] for name in layers}

    def reduce(_name: str, out: torch.Tensor) -> ImageStats:
        return channel_stats(out, channels)

    for first in range(start, stop, batch_size):
        batch = pixels[first : min(first + batch_size, stop)].to(model.device)
        outputs = forward_to(model.module, model.normalize(batch), list(layers), reduce=reduce)
        for name in layers:
            found[name].append(outputs[name])
        if bar is not None:
            bar(len(batch))
    return {name: ImageStats.join(parts) for name, parts in found.items()}


def image_stats(
    model: Model,
    pixels: torch.Tensor,
    layer: str,
    channels: Sequence[int] | None = None,
    batch_size: int = 16,
    start: int = 0,
    stop: int | None = None,
    bar: Callable[[int], None] | None = None,
) -> ImageStats:
    """:func:`layer_stats` of one layer."""
    return layer_stats(model, pixels, [layer], channels, batch_size, start, stop, bar)[layer]


def rank_examples(
    stats: ImageStats, layer: str, channels: Sequence[int] | None, top_k: int
) -> ChannelExamples:
    """The top ``top_k`` images of each channel by spatial maximum (``stats`` of the whole
    dataset, in order; ``channels`` as they were taken, None for all)."""
    max_per_image = stats.maxima.T  # C x N
    positions = stats.positions.permute(1, 0, 2)  # C x N x 2
    k = min(top_k, max_per_image.shape[1])
    top = max_per_image.topk(k, dim=1)
    chosen = channels if channels is not None else range(max_per_image.shape[0])
    return ChannelExamples(
        layer=layer,
        channels=[int(c) for c in chosen],
        top_images=top.indices,
        top_values=top.values,
        top_positions=torch.gather(positions, 1, top.indices[..., None].expand(-1, -1, 2)),
        max_per_image=max_per_image,
        mean_per_image=stats.means.T,
    )


def top_examples(
    model: Model,
    pixels: torch.Tensor,
    layer: str,
    channels: Sequence[int] | None = None,
    top_k: int = 9,
    batch_size: int = 16,
    show_progress: bool = False,
) -> ChannelExamples:
    """Run ``pixels`` (N x C x H x W in [0, 1]) up to ``layer``; rank images per channel."""
    check_layers(model.module, [layer])
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"dataset through {layer}", total=len(pixels), status="")
        stats = image_stats(
            model, pixels, layer, channels, batch_size, bar=lambda n: bar.update(task, advance=n)
        )
    return rank_examples(stats, layer, channels, top_k)


def crop(pixels: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The patch ``box`` (top, left, bottom, right) of one image C x H x W."""
    top, left, bottom, right = box
    return pixels[:, top:bottom, left:right]
