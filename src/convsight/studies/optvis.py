"""Jobs behind ``convsight maximize`` and ``convsight classviz``: check, render, write.

Each takes a built :class:`~convsight.models.Model` (on its device) and a request holding the
typed :class:`~convsight.optvis.settings.RenderSettings`; each returns a typed result
(:mod:`convsight.studies.optvis_results`) whose ``to_json()`` is its ``summary.json``. Given
an output folder, the job writes the result there (``result.save(out)``); without one it
writes nothing. Every input (layer, channels, classes, dataset, settings, output folder) is
checked before the first optimization step; nothing is written for bad input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from convsight.analysis.trust import OUTPUT, check_judge, transfer
from convsight.analysis.trust_stream import (
    DatasetTrust,
    TrustDataset,
    open_dataset,
    trust_from_folder,
)
from convsight.errors import ConvsightError
from convsight.layers import get_layer, output_shapes
from convsight.models import Model, load_model
from convsight.optvis.budget import check_render, check_steps
from convsight.optvis.channels import parse_channels
from convsight.optvis.forward import probe_shapes
from convsight.optvis.means import class_counts, class_mean_images
from convsight.optvis.model_hooks import check_model_hooks
from convsight.optvis.objectives import Objective, channel, target_score
from convsight.optvis.recipes import check_size, class_objective, penalties
from convsight.optvis.render import (
    RenderResult,
    render_channels,
    render_classes,
    render_targets,
)
from convsight.optvis.settings import RenderSettings, settings_for
from convsight.report import prepare_out_dir, safe_filename
from convsight.runtime import resolve_device, seed_everything
from convsight.studies.optvis_results import ClassvizResult, MaximizeResult, summary_rows
from convsight.targets import OneTarget, Target, parse_target, resolve_targets


def chosen_settings(settings: RenderSettings, target: str = "channel") -> frozenset[str]:
    """The settings that differ from their preset's value for ``target`` (all that differ
    from :class:`RenderSettings`' defaults when the preset is not one of convsight's)."""
    try:
        base = settings_for(settings.preset, target).to_dict()
    except ConvsightError:
        base = RenderSettings().to_dict()
    return frozenset(k for k, v in settings.to_dict().items() if k != "preset" and v != base[k])


@dataclass(frozen=True)
class MaximizeRequest:
    """What :func:`maximize` renders: channels of ``layer`` (a text such as ``"0-7,9"``, read
    against the layer's channel count, or the numbers), with ``settings``.

    ``chosen``: the settings the user chose (a message about memory names these knobs first;
    a chosen skip gradient must find residual blocks); None: those that differ from the
    preset's. ``weights`` is only recorded (the model is already loaded). A request with
    more than :data:`~convsight.optvis.budget.MAX_STEPS` steps needs ``yes``. With
    ``dataset`` (an image folder, sub-folders too) each render's trust is measured there
    (:mod:`convsight.analysis.trust`).
    """

    layer: str
    channels: str | Sequence[int]
    settings: RenderSettings = field(default_factory=settings_for)
    seed: int = 0
    yes: bool = False
    weights: str | os.PathLike | None = None
    chosen: frozenset[str] | None = None
    dataset: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        check_steps(self.settings.steps, self.yes)

    def given(self) -> frozenset[str]:
        """The settings the user chose (see the class)."""
        return chosen_settings(self.settings) if self.chosen is None else self.chosen


def _class_settings() -> RenderSettings:
    return settings_for("robust", "class")


@dataclass(frozen=True)
class ClassvizRequest:
    """What :func:`classviz` renders: the models of ``classes`` (names or indices, or
    ``["all"]``) with ``settings`` (a preset's class defaults: ``settings_for(preset,
    "class")``), started from noise (``init="random"``) or from each class's mean image
    (``"mean"``: over ``dataset``, an image folder with a sub-folder per class, or "mnist"
    read from ``data_dir``). An image folder as ``dataset`` also measures each class model's
    trust there, whatever the start (:mod:`convsight.analysis.trust`). ``seed``, ``yes``,
    ``weights`` and ``chosen`` as for :class:`MaximizeRequest`."""

    classes: Sequence[OneTarget]
    settings: RenderSettings = field(default_factory=_class_settings)
    init: str = "random"
    dataset: str | os.PathLike | None = None
    data_dir: str | os.PathLike | None = None
    seed: int = 0
    yes: bool = False
    weights: str | os.PathLike | None = None
    chosen: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.init not in ("random", "mean"):
            raise ConvsightError(f"--init must be 'random' or 'mean', not '{self.init}'")
        if not self.classes:
            raise ConvsightError("no classes given")
        targets = [parse_target(c) if isinstance(c, str) else c for c in self.classes]
        if self.init == "mean" and not all(isinstance(t, (int, str)) for t in targets):
            raise ConvsightError("--init mean starts from class means: give classes only")
        check_steps(self.settings.steps, self.yes)

    def given(self) -> frozenset[str]:
        """The settings the user chose (see :class:`MaximizeRequest`)."""
        return chosen_settings(self.settings, "class") if self.chosen is None else self.chosen


def _record(weights: str | os.PathLike | None) -> str | None:
    return str(weights) if weights else None


def _trust_data(model: Model, dataset: str | os.PathLike | None) -> TrustDataset | None:
    """The image folder trust is measured on, checked before any render (None: none given,
    or MNIST, which is not a folder)."""
    if dataset is None or str(dataset) == "mnist":
        return None
    return open_dataset(dataset, model)


def _trust(
    model: Model,
    data: TrustDataset | None,
    objective: Objective,
    settings: RenderSettings,
    images: torch.Tensor,
    layer: str,
) -> DatasetTrust | None:
    """The trust measures of a render over ``data``, for the objective it maximized (its
    penalties subtracted, as the render did)."""
    if data is None:
        return None
    extra = penalties(settings)
    full = objective if extra is None else objective - extra
    return trust_from_folder(model, full, images, layer, data)


def load_on_device(model: str | Model, weights: str | os.PathLike | None, device: str) -> Model:
    """The model (a spec is loaded with ``weights``) on ``device``: for studies that load
    the model they render themselves (the paper's parts)."""
    dev = resolve_device(device)
    loaded = model if isinstance(model, Model) else load_model(model, weights)
    return loaded.to(dev)


def _check_model_hooks(model: Model, settings: RenderSettings, given: frozenset[str]) -> None:
    """Hooks the user switched on (``given``) must find their layers. The class preset's skip
    gradient is not checked: on a model without residual blocks it is off (the summary says
    so)."""
    skip = settings.skip_gradient if "skip_gradient" in given else 1.0
    check_model_hooks(model.module, settings.ghost, settings.bn_prior, skip)


def check_channels(model: Model, layer: str, channels: Sequence[int], size: int | None) -> None:
    """Unknown layer, no channel or a channel out of range fails here (one cheap forward at
    ``size`` or the model's input size, no steps)."""
    get_layer(model.module, layer)
    if not channels:
        raise ConvsightError("no channels given")
    h, w = (size, size) if size else model.card.input_size
    x = torch.zeros(1, model.card.channels, h, w, device=model.device)
    objective = channel(layer, list(channels))
    objective.check(probe_shapes(model, objective, x), len(channels))


def _checked_channels(model: Model, request: MaximizeRequest) -> list[int]:
    """The channels to render (read against the layer's channel count), once the layer has
    them, their render fits in memory and the layer gives a map at the render size."""
    layer, channels, settings = request.layer, request.channels, request.settings
    if isinstance(channels, str):
        get_layer(model.module, layer)  # the channel count does not depend on the size
        count = output_shapes(model.module, [layer], model.example_input())[layer][0]
        chans = parse_channels(channels, limit=count)
    else:
        chans = [int(c) for c in channels]
        check_channels(model, layer, chans, None)
    rows = (len(chans), layer, request.given(), "number of channels", "channels")
    check_render(model, channel(layer, chans), settings, *rows)
    check_size(model, channel(layer, 0), settings)  # probes the size: after the memory check
    check_channels(model, layer, chans, settings.size)  # the layer's map at this size
    return chans


def maximize(
    model: Model,
    request: MaximizeRequest,
    out: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> MaximizeResult:
    """Render channels of a layer; with ``out``, write there what
    :meth:`MaximizeResult.save` writes (grid PNG, one PNG per channel, images.npz,
    summary.json), the folder made once every input is checked. Checked against the memory
    available first (:mod:`convsight.optvis.budget`)."""
    settings, layer = request.settings, request.layer
    chans = _checked_channels(model, request)
    _check_model_hooks(model, settings, request.given())
    data = _trust_data(model, request.dataset)
    folder = None if out is None else prepare_out_dir(out)
    seed_everything(request.seed)
    start = time.perf_counter()
    rendered = render_channels(
        model, layer, chans, seed=request.seed, progress=show_progress, settings=settings
    )
    seconds = time.perf_counter() - start
    trust = _trust(model, data, channel(layer, chans), settings, rendered.images, layer)
    result = MaximizeResult(
        model=model.card.name,
        weights=_record(request.weights),
        layer=layer,
        objective=rendered.description,
        channels=chans,
        images=rendered.images,
        values=rendered.values,
        dead=list(rendered.dead),
        settings=settings,
        seed=request.seed,
        device=str(model.device),
        seconds=seconds,
        trust=trust,
    )
    if folder is not None:
        result.save(folder)
    return result


def _target_rows(model: Model, classes: Sequence[OneTarget]) -> Target | None:
    """None when every item is a class (name or index, or ``all``); else one bound target
    per row (:mod:`convsight.targets`; command-line text as :func:`parse_target` reads it)."""
    items = [parse_target(c) if isinstance(c, str) else c for c in classes]
    if all(isinstance(item, (int, str)) for item in items):
        return None
    return resolve_targets(model, items, len(items))


def _classviz_targets(
    model: Model,
    request: ClassvizRequest,
    target: Target,
    out: str | os.PathLike | None,
    show_progress: bool,
) -> ClassvizResult:
    """:func:`classviz` of targets that are not all classes: each row maximizes its own
    target's score; the rows record that score for the final image."""
    settings, count = request.settings, len(request.classes)
    objective = target_score(target)
    what = (count, "the targets' scores", request.given(), "number of targets", "targets")
    check_render(model, objective, settings, *what)
    check_size(model, objective, settings, count)
    _check_model_hooks(model, settings, request.given())
    data = _trust_data(model, request.dataset)
    folder = None if out is None else prepare_out_dir(out)
    seed_everything(request.seed)
    began = time.perf_counter()
    items = [parse_target(c) if isinstance(c, str) else c for c in request.classes]
    rendered = render_targets(
        model, items, seed=request.seed, progress=show_progress, settings=settings
    )
    seconds = time.perf_counter() - began
    rows = _target_summary(model, rendered, target)
    trust = _trust(model, data, objective, settings, rendered.images, OUTPUT)
    result = _class_models(model, request, rendered, [], rows, None, seconds, trust)
    if folder is not None:
        result.save(folder)
    return result


def _class_models(
    model: Model,
    request: ClassvizRequest,
    rendered: RenderResult,
    indices: list[int],
    rows: list[dict[str, Any]],
    start: torch.Tensor | None,
    seconds: float,
    trust: DatasetTrust | None = None,
) -> ClassvizResult:
    """The class models' result: the render (``seconds`` long), its rows, their trust
    measures and the request's settings."""
    return ClassvizResult(
        model=model.card.name,
        weights=_record(request.weights),
        objective=rendered.description,
        head=model.card.head,
        init=request.init,
        dataset=str(request.dataset) if request.dataset else None,
        indices=indices,
        images=rendered.images,
        values=rendered.values,
        dead=list(rendered.dead),
        rows=rows,
        start=start,
        settings=request.settings,
        seed=request.seed,
        device=str(model.device),
        seconds=seconds,
        trust=trust,
    )


def _target_summary(model: Model, rendered: RenderResult, target: Target) -> list[dict[str, Any]]:
    """A row per rendered target: what it is, its score for the final image, the file."""
    with torch.no_grad():
        scores = target(model.module(model.normalize(rendered.images.to(model.device))))
    names = [target[i : i + 1].describe() for i in range(len(rendered.images))]
    rows = summary_rows(rendered.values, rendered.dead, names)
    for i, row in enumerate(rows):
        row.update(score=float(scores[i]), file=safe_filename(f"target_{i:02d}_{names[i]}.png"))
    return rows


def _class_indices(model: Model, classes: Sequence[str | int]) -> list[int]:
    """Class indices of names or numbers; ``all`` is every class of the model."""
    if [str(c).lower() for c in classes] == ["all"]:
        model.class_index(0)  # a model without class scores fails here
        classes = list(range(model.card.num_classes or 0))
    return [model.class_index(c) for c in classes]


def _check_class_render(
    model: Model, indices: list[int], settings: RenderSettings, given: frozenset[str]
) -> None:
    """The class models' render must fit memory (:func:`check_render`) and the model
    (:func:`check_size`), and its model hooks the model."""
    objective = class_objective(model, indices, settings.class_objective, settings.cossim_power)
    rows = (len(indices), "the class scores", given, "number of classes", "classes")
    check_render(model, objective, settings, *rows)
    check_size(model, objective, settings, len(indices))  # probes the size: after the memory
    _check_model_hooks(model, settings, given)


def _mean_start(
    request: ClassvizRequest, model: Model, indices: list[int]
) -> tuple[torch.Tensor, dict[int, int]]:
    """Start images for ``init='mean'``: each class's mean image, and how many were averaged."""
    dataset = request.dataset
    if dataset is None:
        raise ConvsightError("--init mean needs --dataset DIR (or 'mnist')")
    means = class_mean_images(dataset, model.card, indices, data_dir=request.data_dir)
    return torch.stack([means[i] for i in indices]), class_counts(dataset, model.card)


def _class_rows(
    model: Model, rendered: RenderResult, indices: list[int], counts: dict[int, int] | None
) -> list[dict[str, Any]]:
    """A row per class model, with the model's probability and logit for its class (and,
    given ``counts``, how many images its start image averaged)."""
    with torch.no_grad():
        logits = model.module(model.normalize(rendered.images.to(model.device))).cpu()
    probs = logits.softmax(1)
    names = [model.card.label(i) for i in indices]
    top1 = logits.argmax(1).tolist()
    rows = summary_rows(rendered.values, rendered.dead, names)
    for r, row in enumerate(rows):
        row.update(
            {
                "class": indices[r],
                "probability": float(probs[r, indices[r]]),
                "logit": float(logits[r, indices[r]]),
                "model_top1": model.card.label(top1[r]),
                "file": _class_file(indices[r], names[r]),
            }
        )
        if counts is not None:
            row["mean_of_images"] = counts.get(indices[r])
    return rows


def _class_file(index: int, name: str) -> str:
    """The file name of a class model (what :func:`out_file` makes of it)."""
    return safe_filename(f"class_{index:04d}_{safe_filename(name)}.png", max_length=200)


def classviz(
    model: Model,
    request: ClassvizRequest,
    out: str | os.PathLike | None = None,
    show_progress: bool = True,
    judge: Model | None = None,
) -> ClassvizResult:
    """Class models; with ``out``, written there as :meth:`ClassvizResult.save` does (grid
    PNG, one PNG per class, start images if ``init='mean'``, summary.json). Checked as
    :func:`maximize` is. With ``judge`` (a second model scoring the same classes), each row
    says whether the judge sees its class (:func:`~convsight.analysis.trust.transfer`)."""
    settings = request.settings
    target = _target_rows(model, request.classes)
    if judge is not None:
        check_judge(model, judge)
        if target is not None:
            raise ConvsightError("--judge judges class models: give classes only")
    if target is not None:
        return _classviz_targets(model, request, target, out, show_progress)
    classes = [c for c in request.classes if isinstance(c, (int, str))]  # all of them here
    indices = _class_indices(model, classes)
    _check_class_render(model, indices, settings, request.given())
    start_pixels, counts = None, None
    if request.init == "mean":
        start_pixels, counts = _mean_start(request, model, indices)
    data = _trust_data(model, request.dataset)
    folder = None if out is None else prepare_out_dir(out)
    seed_everything(request.seed)
    began = time.perf_counter()
    rendered = render_classes(
        model,
        indices,
        seed=request.seed,
        init_pixels=start_pixels,
        progress=show_progress,
        settings=settings,
    )
    seconds = time.perf_counter() - began
    rows = _class_rows(model, rendered, indices, counts)
    if judge is not None:
        for row, judged in zip(rows, transfer(judge, rendered.images, indices), strict=True):
            row["transfer"] = judged
    objective = class_objective(model, indices, settings.class_objective, settings.cossim_power)
    trust = _trust(model, data, objective, settings, rendered.images, OUTPUT)
    result = _class_models(model, request, rendered, indices, rows, start_pixels, seconds, trust)
    if folder is not None:
        result.save(folder)
    return result
