"""Why this decision (``explain``): the channels that carried it, their pictures, and where
they fired.

:func:`explain` takes a built model and an :class:`ExplainRequest` and returns an
:class:`ExplainResult` (nothing written; in a notebook it shows itself);
``result.save(folder)`` writes ``explain.html``, ``explain.json``, ``explain.npz`` and the
pictures, and :func:`write_explain` (the command line's) does both. Per layer it ranks the
channels by their share of the relevance (:func:`~convsight.analysis.channel_relevance.
channel_relevance`: CRP where the model has an LRP composite, else gradient x activation) and
shows the top ones with their conditional heatmap over the photo, their feature visualization
(from an atlas of the same model, else rendered) and, given a dataset, their top examples by
activation and by relevance for the decision's class; and a semantic dictionary: per
location, the channel carrying the most relevance.
Every input is checked before any expensive work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from convsight.analysis.channel_relevance import (
    ChannelMethod,
    ChannelRelevance,
    LayerRelevance,
    channel_relevance,
    conditional_heatmaps,
)
from convsight.attribution.cam import default_cam_layer
from convsight.attribution.lrp import CompositeName, check_lrp_support, composite_name
from convsight.errors import ConvsightError
from convsight.layers import check_layers
from convsight.models import Model
from convsight.report.files import prepare_out_dir
from convsight.runtime import seed_everything
from convsight.studies.explain_parts import (
    AtlasSource,
    Dataset,
    Example,
    FoundExamples,
    channel_pictures,
    check_dataset,
    dataset_examples,
    read_atlas,
    semantic_dictionary,
)
from convsight.studies.explain_result import ExplainedChannel, ExplainedLayer, ExplainResult
from convsight.studies.saliency import request_images, request_target
from convsight.targets import Target, parse_target

TOP_CLASSES = 5


@dataclass(frozen=True)
class ExplainRequest:
    """What :func:`explain` explains: one ``image`` (a file, or pixels C x H x W in [0, 1]),
    for ``target`` (a class index or name, or any target form of ``saliency``; None: the
    predicted class), at ``layers`` (None: the layer a CAM reads, the last stage's output),
    showing the ``top`` channels of each by |share|. ``atlas``: an atlas folder of the same
    model to take the channel pictures from (missing ones are rendered with ``preset``,
    ``steps`` and ``size``); ``dataset``: a folder of images to find each channel's
    ``examples`` top images in. ``composite``: zennit's composite CRP runs with (where the
    model has one; see :class:`~convsight.attribution.lrp.LRP`). ``model_name`` and
    ``weights`` are only recorded."""

    image: str | os.PathLike | torch.Tensor
    target: str | int | Target | None = None
    layers: tuple[str, ...] | None = None
    top: int = 6
    atlas: str | os.PathLike | None = None
    dataset: str | os.PathLike | None = None
    examples: int = 4
    preset: str = "robust"
    steps: int = 64
    size: int = 96
    seed: int = 0
    model_name: str | None = None
    weights: str | os.PathLike | None = None
    composite: str = "epsilon_plus_flat"

    def __post_init__(self) -> None:
        composite_name(self.composite)  # an unknown composite: one sentence, before any work
        if isinstance(self.target, str):  # command-line text: its form, before any work
            parse_target(self.target)
        for name, value in (("top", self.top), ("examples", self.examples)):
            if value < 1:
                raise ConvsightError(f"--{name} must be at least 1, not {value}")
        if self.steps < 1 or self.size < 8:
            raise ConvsightError("--steps must be at least 1 and --size at least 8 pixels")


@dataclass(frozen=True)
class _Checked:
    pixels: torch.Tensor
    path: Path
    target: Target | None
    layers: list[str]
    method: ChannelMethod
    reason: str
    atlas: AtlasSource | None
    dataset: Dataset | None
    composite: CompositeName


def choose_method(model: Model) -> tuple[ChannelMethod, str]:
    """``crp`` where the model has an LRP composite (a rule for every layer, no pooling in its
    own code: :func:`check_lrp_support`), else ``grad_x_act``; and why."""
    try:
        check_lrp_support(model)
    except ConvsightError as exc:
        return "grad_x_act", f"no LRP composite for this model ({exc})"
    return "crp", "the model has an LRP composite (zennit's rules cover every layer)"


def _checked(model: Model, request: ExplainRequest) -> _Checked:
    """Every input checked, before any expensive work."""
    if isinstance(request.image, torch.Tensor):
        image = request.image if request.image.dim() == 4 else request.image.unsqueeze(0)
        if image.shape[0] != 1:
            raise ConvsightError(f"explain takes one image; got {image.shape[0]}")
        pixels, paths = request_images(model, image)
    else:
        pixels, paths = request_images(model, [request.image])
    layers = list(dict.fromkeys(request.layers or [default_cam_layer(model)]))
    check_layers(model.module, layers)
    target = request_target(model, [request.target], 1) if request.target is not None else None
    atlas = read_atlas(model, request.atlas) if request.atlas is not None else None
    dataset = check_dataset(request.dataset) if request.dataset is not None else None
    method, reason = choose_method(model)
    composite = composite_name(request.composite)
    return _Checked(pixels, paths[0], target, layers, method, reason, atlas, dataset, composite)


def explain(model: Model, request: ExplainRequest, seeded: bool = False) -> ExplainResult:
    """Why ``model`` decided what it did on the request's image; nothing written
    (``result.save(folder)`` writes the files). Seeded with ``request.seed`` first (the
    rendered pictures follow it), unless ``seeded``."""
    if not seeded:
        seed_everything(request.seed)
    return _compute(model, request, _checked(model, request))


def write_explain(
    model: Model, request: ExplainRequest, out: str | os.PathLike, seeded: bool = False
) -> ExplainResult:
    """:func:`explain`, then ``result.save(out)``; every input is checked before the folder
    is made, and the folder before any expensive work."""
    if not seeded:
        seed_everything(request.seed)
    checked = _checked(model, request)
    prepare_out_dir(out)
    result = _compute(model, request, checked)
    result.save(out)
    return result


def _prediction(model: Model, pixels: torch.Tensor) -> list[tuple[int, str, float]]:
    """The top classes with their probabilities (none for a model without class rows)."""
    with torch.no_grad():
        output = model.module(model.normalize(pixels))
    if output.dim() != 2:
        return []
    probs = output.softmax(1)[0]
    top = probs.topk(min(TOP_CLASSES, probs.numel()))
    label = model.card.label
    return [(int(i), label(int(i)), float(p)) for p, i in zip(top.values, top.indices, strict=True)]


def _compute(model: Model, request: ExplainRequest, checked: _Checked) -> ExplainResult:
    found = channel_relevance(
        model, checked.pixels, checked.target, checked.layers, checked.method, checked.composite
    )
    chosen = {}
    for name, layer in found.layers.items():
        k = min(request.top, layer.share.numel())
        chosen[name] = layer.share.abs().topk(k).indices.tolist()
    examples = FoundExamples({}, {}, [])
    if checked.dataset is not None:
        target = checked.target if checked.target is not None else _decided(found)
        examples = dataset_examples(model, checked.dataset, chosen, request.examples, target)
    layers = [
        _explained_layer(model, request, checked, layer, chosen[name], examples)
        for name, layer in found.layers.items()
    ]
    return ExplainResult(
        model=request.model_name or model.card.name,
        weights=str(request.weights) if request.weights else None,
        image=checked.path,
        pixels=checked.pixels[0].cpu(),
        prediction=_prediction(model, checked.pixels),
        relevance=found,
        method_reason=checked.reason,
        layers=layers,
        atlas=checked.atlas.path if checked.atlas else None,
        dataset=checked.dataset.path if checked.dataset else None,
        skipped=examples.skipped,
        seed=request.seed,
    )


def _explained_layer(
    model: Model,
    request: ExplainRequest,
    checked: _Checked,
    layer: LayerRelevance,
    channels: list[int],
    examples: FoundExamples,
) -> ExplainedLayer:
    """One layer's channels shown: conditional heatmaps, pictures, examples, atlas pages."""
    name, atlas = layer.layer, checked.atlas
    heat = conditional_heatmaps(
        model, checked.pixels, name, channels, checked.target, checked.method, checked.composite
    )
    render = {"preset": request.preset, "steps": request.steps, "size": request.size}
    pictures = channel_pictures(model, name, channels, atlas, render, request.seed)
    shown = [
        ExplainedChannel(
            channel=c,
            share=float(layer.share[c]),
            relevance=float(layer.relevance[c]),
            heatmap=heat[i].cpu(),
            picture=pictures[i],
            examples=_of(examples.active, name, c),
            relevant=_of(examples.relevant, name, c),
            atlas_page=atlas.page(name, c) if atlas is not None else None,
        )
        for i, c in enumerate(channels)
    ]
    dictionary = semantic_dictionary(layer.maps.cpu())
    relevance, share = layer.relevance.cpu(), layer.share.cpu()
    return ExplainedLayer(name, layer.total, relevance, share, shown, dictionary)


def _decided(found: ChannelRelevance) -> int | None:
    """The class the relevance was taken for (the predicted one when no target was given);
    None when it is not one class."""
    classes = found.classes
    return classes[0] if classes and len(set(classes)) == 1 else None


def _of(
    examples: dict[str, dict[int, list[Example]]], layer: str, channel: int
) -> list[Example] | None:
    """A channel's examples in ``examples``: none found is [], none looked for is None."""
    return examples[layer].get(channel, []) if layer in examples else None
