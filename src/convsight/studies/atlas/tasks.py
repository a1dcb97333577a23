"""The atlas's units of work, run in this process or on a Ray worker (plain functions of
picklable inputs, returning tensors; only the driver writes files): a chunk of a layer's
channels rendered (each preset; each one's first invariance and the DeconvNet projections of
its top examples), and a slice of the dataset through a layer
(:func:`convsight.analysis.dataset_examples.image_stats`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from convsight.analysis.channel_statistics import ChannelStatistics, stream_channel_statistics
from convsight.analysis.dataset_examples import ReceptiveField
from convsight.analysis.invariances import HessianScale, channel_response, invariances
from convsight.analysis.projections import display, project_units
from convsight.analysis.streamed_examples import TopExamples
from convsight.analysis.surrogate import softplus_surrogate
from convsight.layers import forward_to
from convsight.models import Model
from convsight.optvis.render import RenderResult, render_channels
from convsight.optvis.settings import RenderSettings
from convsight.studies.atlas.inputs import AtlasDataset
from convsight.studies.invariances import sphere_path


@dataclass
class RenderedChunk:
    """Channels of one layer rendered together: one batch row each, per preset; when asked
    for, their first invariance (frames along it and its numbers) and the DeconvNet
    projections of their top dataset examples (shown in [0, 1], cut to the boxes)."""

    channels: list[int]
    renders: dict[str, RenderResult]
    invariances: list[dict[str, Any]] = field(default_factory=list)
    projections: list[list[torch.Tensor]] = field(default_factory=list)
    objectives: dict[str, list[float]] = field(default_factory=dict)
    """Per preset, each channel's objective (its mean activation) on its final picture as
    shown: pixels clamped to [0, 1], untransformed, at the render's size, in float32."""


def slice_examples(
    model: Model,
    dataset: AtlasDataset,
    layers: list[str],
    top_k: int,
    batch_size: int,
    start: int,
    stop: int,
    relevance: bool = False,
) -> tuple[dict[str, TopExamples], dict[str, ChannelStatistics]]:
    """The streamed top examples (:class:`TopExamples`) and trust statistics
    (:class:`ChannelStatistics`, with class relevance when asked for) of images ``start`` to
    ``stop`` of ``dataset`` for each of ``layers``, one pass, ``batch_size`` images at a time."""
    batches = dataset.batches(start, stop, batch_size)
    return stream_channel_statistics(model, batches, layers, top_k, relevance)


def render_chunk(
    model: Model,
    layer: str,
    channels: list[int],
    settings: dict[str, RenderSettings],
    seed: int,
    invariance_beta: float = 0.0,
    dataset: AtlasDataset | None = None,
    examples: dict[str, torch.Tensor] | None = None,
    receptive: ReceptiveField | None = None,
) -> RenderedChunk:
    """Render ``channels`` of ``layer`` with each preset's settings (rows seeded by channel,
    so a channel looks the same in any chunk); with ``invariance_beta`` > 0, each one's first
    invariance at the robust render (else the first preset's); with the ``dataset``, the
    layer's top ``examples`` and ``receptive`` field, the projections of each one's top
    examples (their images decoded here)."""
    renders = {
        p: render_channels(model, layer, channels, preset=p, seed=seed, **_overrides(s))
        for p, s in settings.items()
    }
    chunk = RenderedChunk(list(channels), renders)
    chunk.objectives = {p: final_objectives(model, layer, channels, r) for p, r in renders.items()}
    if invariance_beta:
        start = "robust" if "robust" in renders else next(iter(renders))
        surrogate = softplus_surrogate(model, invariance_beta)[0]
        for row, channel in enumerate(channels):
            optimum = renders[start].images[row]
            found = first_invariance(surrogate, layer, channel, optimum, invariance_beta, seed)
            chunk.invariances.append({"from": start, **found})
    if examples is not None:
        assert dataset is not None  # the examples come with the dataset
        for channel in channels:
            chosen = examples["top_images"][channel].tolist()
            positions = examples["top_positions"][channel].tolist()
            units = torch.tensor([[channel, y, x] for y, x in positions])
            projected = project_units(model, dataset.load(chosen), layer, units, receptive)
            chunk.projections.append([display(m) for m in projected.crops()])
    return chunk


@torch.no_grad()
def final_objectives(
    model: Model, layer: str, channels: list[int], result: RenderResult
) -> list[float]:
    """Each row's channel mean of ``layer`` on the render's final images (as shown)."""
    x = model.normalize(result.images.to(model.device).float())
    act = forward_to(model.module, x, [layer])[layer].float()
    rows = torch.arange(len(channels))
    return act.flatten(2).mean(2)[rows, torch.tensor(channels)].cpu().tolist()


def first_invariance(
    surrogate: Model, layer: str, channel: int, optimum: torch.Tensor, beta: float, seed: int
) -> dict[str, Any]:
    """The channel's first invariance at its rendered ``optimum`` (on the response's level
    set within its sphere), from the exact Hessian of the softplus surrogate: the frames of
    the network's images along it (``frames``), its eigenvalue and check."""
    x = optimum.to(surrogate.device)
    f = channel_response(surrogate, layer, channel, x.shape[-1])
    found = invariances(f, x, k=1, scale=HessianScale(softplus=beta), seed=seed, level_set=True)
    angles = torch.linspace(0.0, math.radians(45.0), 9)
    return {
        "frames": sphere_path(found.point, found.invariant[0], angles).clamp(0, 1).cpu(),
        "eigenvalue": float(found.invariant_values[0]),
        "reliable": found.reliable,
        "products": found.products,
        "tangent_gradient_norm": found.tangent_gradient_norm,
        "seconds": found.seconds,
    }


def _overrides(settings: RenderSettings) -> dict[str, Any]:
    return {"steps": settings.steps, "size": settings.size}
