"""DeconvNet projections (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901): one unit of a
layer taken back to the input, to show which pixels of its top dataset patch it responds to.

The projection of unit (channel, y, x) of an image is the backward pass from that one unit
(every other activation of the layer set to zero) through the truncated network, with the
DeconvNet rule at every rectifier (:func:`~convsight.attribution.backprop.rectifier_rule`: only
the positive part of the signal passes, whatever the forward input was). The rest is autograd,
which is the deconvnet of the paper: a convolution goes back through its transposed filters
(no bias), and max-pooling through the switches of the forward pass, since the gradient of
``MaxPool2d`` goes to the argmax of each window, which is unpooling with the forward's
switches (for overlapping windows a position chosen twice gets the sum). The map is seeded
with 1, so the paper's (seeded with the activation) is this times the unit's value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from PIL.Image import Resampling

from convsight.analysis.dataset_examples import (
    ChannelExamples,
    ReceptiveField,
    crop,
    receptive_field,
)
from convsight.attribution.backprop import rectifier_rule
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to
from convsight.models import Model
from convsight.report.images import to_pil

PAPER = "https://arxiv.org/abs/1311.2901"
HIGH_FREQUENCY = 0.25  # cycles per pixel: above it lie pixel-scale texture and checkerboards
TEXTURE_MIN_SIDE = 8  # a smaller box has too few frequencies below the cut to tell


@dataclass
class Projections:
    """DeconvNet projections of one unit per image, in the model's input space (what its
    first layer sees), with each unit's receptive field box in input pixels."""

    layer: str
    units: torch.Tensor  # N x 3: channel, y, x of the unit projected from each image
    maps: torch.Tensor  # N x C x H x W
    boxes: list[tuple[int, int, int, int]]  # (top, left, bottom, right) per row, clipped
    rectifier_calls: int  # rectifier calls the DeconvNet rule was applied to

    def crops(self) -> list[torch.Tensor]:
        """Each map cut to its unit's receptive field box (the same crop as the patch)."""
        return [crop(m, b) for m, b in zip(self.maps, self.boxes, strict=True)]


@dataclass
class ChannelProjections:
    """A channel's top dataset examples: which images, their patches and projections."""

    channel: int
    images: list[int]  # dataset indices, strongest first
    scores: list[float]  # the channel's largest activation in each image
    patches: list[torch.Tensor]  # the receptive field box of each image, pixels in [0, 1]
    projections: Projections


def project_units(
    model: Model,
    pixels: torch.Tensor,
    layer: str,
    units: torch.Tensor,
    field: ReceptiveField | None = None,
    batch_size: int = 16,
) -> Projections:
    """Project unit ``units[i]`` (channel, y, x) of ``layer`` for image ``pixels[i]``
    (N x C x H x W in [0, 1]) back to the input, with the DeconvNet rule.

    Only the network up to ``layer`` runs. ``field``: the layer's receptive field (measured
    when None). A rectifier the rule cannot reach (TorchScript, raw ``aten`` calls) is refused.
    """
    check_layers(model.module, [layer])
    units = torch.as_tensor(units, dtype=torch.long).reshape(-1, 3)
    if len(units) != len(pixels):
        raise ConvsightError(f"{len(pixels)} images but {len(units)} units to project")
    field = field if field is not None else receptive_field(model, layer)
    maps, calls = [], 0
    for start in range(0, len(pixels), batch_size):
        chunk, rows = pixels[start : start + batch_size], units[start : start + batch_size]
        projected, applied = _project_batch(model, chunk, layer, rows)
        maps.append(projected)
        calls += applied
    boxes = [field.box(int(y), int(x)) for _, y, x in units.tolist()]
    return Projections(layer, units, torch.cat(maps), boxes, calls)


def _project_batch(
    model: Model, pixels: torch.Tensor, layer: str, units: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One backward pass from one unit per row (rows are independent in eval mode)."""
    with torch.enable_grad():
        x = model.normalize(pixels.to(model.device).float()).detach().requires_grad_(True)
        with rectifier_rule(model.module, "deconvnet") as counts:
            out = forward_to(model.module, x, [layer])[layer]
            if out.dim() != 4:
                size = "x".join(map(str, out.shape[1:]))
                raise ConvsightError(f"layer '{layer}' outputs {size}, not channel maps")
            c, y, x_ = (units[:, i].to(out.device) for i in range(3))
            picked = out[torch.arange(len(out), device=out.device), c, y, x_]
            (gradient,) = torch.autograd.grad(picked.sum(), x)
    if counts.unreached:
        raise ConvsightError(
            f"DeconvNet cannot reach {counts.unreached} rectifier(s) of model "
            f"'{model.card.name}' (run inside TorchScript or as raw aten calls), so its "
            "projection would be wrong"
        )
    return gradient.detach().cpu(), counts.applied


def project_examples(
    model: Model,
    pixels: torch.Tensor | Callable[[list[int]], torch.Tensor],
    examples: ChannelExamples,
    field: ReceptiveField | None = None,
    batch_size: int = 16,
) -> list[ChannelProjections]:
    """For each channel of ``examples`` (from :func:`top_examples` on ``pixels``): its top
    images' patches and the projections of their strongest units, strongest first.
    ``pixels``: the dataset's (N x C x H x W), or a function that decodes the images of the
    indices it is given (k x C x H x W), so only the top images are ever held."""
    field = field if field is not None else receptive_field(model, examples.layer)
    found = []
    for row, channel in enumerate(examples.channels):
        chosen = examples.top_images[row].tolist()
        images = pixels(chosen) if callable(pixels) else pixels[chosen]
        positions = examples.top_positions[row]
        units = torch.cat((torch.full((len(chosen), 1), channel), positions.long()), 1)
        projections = project_units(model, images, examples.layer, units, field, batch_size)
        patches = [crop(image, b) for image, b in zip(images, projections.boxes, strict=True)]
        scores = [float(v) for v in examples.top_values[row].tolist()]
        found.append(ChannelProjections(channel, chosen, scores, patches, projections))
    return found


def high_frequency_share(
    projection: torch.Tensor, cut: float = HIGH_FREQUENCY
) -> tuple[float, float] | None:
    """How much of a projection (C x h x w, cut to its box) is pixel-scale texture: the share of
    its energy at spatial frequencies above ``cut`` cycles per pixel, with the share white noise
    has on the same grid (its expected value for a map with no spatial structure at all).

    The map is averaged over colour and its mean removed first. ``None`` for a map with no
    energy or with a side under ``TEXTURE_MIN_SIDE`` (a small receptive field, or a box clipped
    at the border), where too few frequencies lie below the cut to tell texture from shape."""
    if min(projection.shape[-2:]) < TEXTURE_MIN_SIDE:
        return None
    grey = projection.double().mean(0)
    power = torch.fft.fft2(grey - grey.mean()).abs() ** 2
    total = power.sum()
    if total == 0:
        return None
    fy = torch.fft.fftfreq(grey.shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(grey.shape[1], dtype=torch.float64)[None, :]
    high = (fy**2 + fx**2).sqrt() > cut
    noise = float(high.sum()) / (high.numel() - 1)  # every bin but the mean's, equally
    return float(power[high].sum() / total), noise


def display(projection: torch.Tensor) -> torch.Tensor:
    """A signed map shown in [0, 1]: 0.5 + x / (2 max|x|) over the whole image (grey is 0)."""
    top = projection.abs().max()
    if top == 0:
        return torch.full_like(projection, 0.5)
    return 0.5 + projection / (2 * top)


def tiles(rows: list[list[torch.Tensor]], tile: int = 112) -> Image.Image:
    """Rows of images (C x h x w in [0, 1]), each enlarged to ``tile`` x ``tile``, 4 pixels
    apart: the same layout as the atlas's examples strip."""
    width = max(len(r) for r in rows)
    size = (tile * width + 4 * (width - 1), tile * len(rows) + 4 * (len(rows) - 1))
    sheet = Image.new("RGB", size, "white")
    for r, images in enumerate(rows):
        for i, pixels in enumerate(images):
            if min(pixels.shape[-2:]) == 0:  # a box clipped away entirely: left blank
                continue
            img = to_pil(pixels).convert("RGB")
            resample = Resampling.NEAREST if max(img.size) < tile // 2 else Resampling.BILINEAR
            sheet.paste(img.resize((tile, tile), resample), (i * (tile + 4), r * (tile + 4)))
    return sheet
