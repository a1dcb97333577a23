"""Methods evaluated a chunk of images at a time: deletion / insertion curves and the
randomization check, with memory bounded by the chunk (:func:`evaluate_chunks`).

The ``evaluate`` job (:func:`convsight.studies.evaluation.write_evaluation`) streams a folder
through these; :func:`evaluate_methods` takes images already in memory.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TaskID

from convsight.attribution import Method
from convsight.engines import AUTO, ForwardEngine
from convsight.errors import ConvsightError
from convsight.metrics import Curves, deletion, insertion, model_randomization
from convsight.models import Model
from convsight.progress import progress_bar
from convsight.studies.attribution import forward_engine, method_options, notice_engines
from convsight.targets import OneTarget, TargetLike


class CurveFunction(typing.Protocol):
    """What :func:`~convsight.metrics.deletion` and :func:`~convsight.metrics.insertion`
    take as the evaluation calls them."""

    def __call__(
        self,
        model: Model,
        inputs: torch.Tensor,
        saliency: torch.Tensor,
        target: TargetLike,
        *,
        step: int,
        batch_size: int,
        engine: ForwardEngine,
    ) -> Curves: ...


CURVES: dict[str, CurveFunction] = {"deletion": deletion, "insertion": insertion}


@dataclass(frozen=True)
class Protocol:
    """How maps are evaluated: the metrics, the curves' step (pixels per step), batch size
    and engine, the sanity check's images and stages, the seed, and ``chunk`` images at a
    time through each method and its curves."""

    metrics: Sequence[str] = ("deletion", "insertion")
    step: int = 224
    chunk: int = 8
    batch_size: int | None = None
    engine: str = AUTO
    sanity_images: int = 4
    sanity_stages: int = 8
    seed: int = 0


@dataclass
class _Curves:
    """One curve kind's running totals over chunks of images."""

    aucs: list[float] = field(default_factory=list)
    sums: Any = 0
    fractions: torch.Tensor | None = None

    def add(self, curves: Curves) -> None:
        self.aucs.extend(curves.auc.tolist())
        self.sums = self.sums + curves.scores.sum(0)
        self.fractions = curves.fractions

    def entry(self, kind: str, images: int, score: str = "probability") -> dict[str, Any]:
        """The curve's AUCs and mean curve; its values are ``mean_probability`` for a class
        target and ``mean_score`` for one scored as it is (``output:0``, ...)."""
        return {
            f"{kind}_auc": float(np.mean(self.aucs)),
            f"{kind}_auc_std": float(np.std(self.aucs)),
            f"{kind}_auc_per_image": self.aucs,
            f"{kind}_curve": {
                "fraction": self.fractions.tolist() if self.fractions is not None else [],
                f"mean_{score if score == 'probability' else 'score'}": (
                    self.sums / images
                ).tolist(),
            },
        }


def _keep_run(entry: dict[str, Any], key: str, run: dict[str, Any]) -> None:
    """Record how a method or curve ran; across chunks, the first run with a fallback wins."""
    if key not in entry or (run.get("fallback") and not entry[key].get("fallback")):
        entry[key] = dict(run)


def _curve(
    kind: str,
    model: Model,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    targets: list[OneTarget],
    protocol: Protocol,
) -> Curves:
    return CURVES[kind](
        model,
        pixels,
        maps,
        targets,
        step=protocol.step,
        batch_size=protocol.batch_size or 16,
        engine=forward_engine(protocol.engine),
    )


Chunk = tuple[torch.Tensor, list[OneTarget]]
"""Pixels of up to ``Protocol.chunk`` images (N x C x H x W) and their target classes."""

Bar = tuple[Progress, TaskID]


@dataclass
class _MethodRun:
    """One method over the chunks: its instance and options, the entry that says how it ran,
    the curves' running totals and the seconds spent per part."""

    method: Method
    options: dict[str, Any]
    entry: dict[str, Any]
    curves: dict[str, _Curves]
    seconds: dict[str, float]

    @classmethod
    def start(
        cls, model: Model, method: type[Method], options: dict[str, Any], protocol: Protocol
    ) -> _MethodRun:
        curves = {kind: _Curves() for kind in protocol.metrics if kind != "sanity"}
        seconds = {"attribution": 0.0, **{kind: 0.0 for kind in curves}}
        return cls(method(model), options, {"options": options, "seconds": {}}, curves, seconds)

    def add(self, model: Model, chunk: Chunk, start: int, protocol: Protocol) -> None:
        """The maps and curves of one chunk (images ``start`` on), added to the totals; the
        maps and curves themselves are dropped."""
        pixels, targets = chunk
        began = time.perf_counter()
        torch.manual_seed(protocol.seed + start)
        heat = self.method.heatmap(pixels, targets, **self.options)
        self.seconds["attribution"] += time.perf_counter() - began
        _keep_run(self.entry, "run", self.method.last_run)
        for kind, total in self.curves.items():
            began = time.perf_counter()
            found = _curve(kind, model, pixels, heat, targets, protocol)
            self.seconds[kind] += time.perf_counter() - began
            _keep_run(self.entry, f"{kind}_run", found.run)
            total.add(found)

    def finish(
        self, model: Model, sanity: Chunk | None, images: int, protocol: Protocol
    ) -> dict[str, Any]:
        """The method's entry: options, runs, AUCs and mean curves over ``images`` images,
        the sanity check on ``sanity`` (seeded with ``protocol.seed``), seconds per part."""
        for kind, total in self.curves.items():
            score = self.entry.get(f"{kind}_run", {}).get("score", "probability")
            self.entry.update(total.entry(kind, images, score))
        if sanity is not None:
            began = time.perf_counter()
            torch.manual_seed(protocol.seed)
            result = model_randomization(
                model,
                type(self.method),
                sanity[0],
                sanity[1],
                seed=protocol.seed,
                stages=protocol.sanity_stages,
                **self.options,
            )
            self.seconds["sanity"] = time.perf_counter() - began
            self.entry["sanity"] = result.to_dict()
        self.entry["seconds"] = self.seconds
        return self.entry


def advance_bar(bar: Bar | None, status: str | None = None, advance: int = 0) -> None:
    """Advance ``bar`` (if any) by ``advance``, showing ``status``."""
    if bar is not None and status:
        bar[0].update(bar[1], advance=advance, status=status)
    elif bar is not None:
        bar[0].update(bar[1], advance=advance)


def evaluate_chunks(
    model: Model,
    chunks: Iterable[Chunk],
    classes: Sequence[type[Method]],
    protocol: Protocol,
    layer: str | None = None,
    bar: Bar | None = None,
    **option_settings: Any,
) -> dict[str, Any]:
    """Every method over ``chunks`` (``protocol.chunk`` images each, in order), a chunk at a
    time: ``{"methods": {name: entry}}``.

    Each chunk goes through every method and its curves and is then dropped; only running
    totals, one AUC per image and the first ``protocol.sanity_images`` images (for the sanity
    check, run once all chunks are done) are kept, so memory is bounded by the chunk whatever
    the number of images. ``bar`` (a progress bar and its task) advances by each chunk.
    """
    runs = {}
    for cls in classes:
        options = method_options(
            cls, layer, batch_size=protocol.batch_size, engine=protocol.engine, **option_settings
        )
        runs[cls.name] = _MethodRun.start(model, cls, options, protocol)
    first: list[torch.Tensor] = []  # the sanity check's images
    targets: list[OneTarget] = []
    wanted = protocol.sanity_images if "sanity" in protocol.metrics else 0
    images = 0
    for chunk in chunks:
        count = len(chunk[1])
        if len(targets) < wanted:
            first.append(chunk[0][: wanted - len(targets)].clone())  # not a view of the chunk
            targets += chunk[1][: wanted - len(targets)]
        for name, run in runs.items():
            advance_bar(bar, f"{name} images {images + 1}-{images + count}")
            run.add(model, chunk, images, protocol)
            advance_bar(bar, advance=count)
        images += count
    if not images:
        raise ConvsightError("no image to evaluate")
    sanity = (torch.cat(first), targets) if first else None
    entries = {name: run.finish(model, sanity, images, protocol) for name, run in runs.items()}
    return {"methods": entries}


def evaluate_methods(
    model: Model,
    pixels: torch.Tensor,
    targets: Sequence[OneTarget],
    classes: Sequence[type[Method]],
    metrics: Sequence[str] = ("deletion", "insertion"),
    layer: str | None = None,
    step: int = 224,
    chunk: int = 8,
    batch_size: int | None = None,
    engine: str = AUTO,
    sanity_images: int = 4,
    sanity_stages: int = 8,
    seed: int = 0,
    show_progress: bool = False,
    **option_settings: Any,
) -> dict[str, Any]:
    """Deletion / insertion AUC per image and method, mean curves, and the sanity check.

    Images go ``chunk`` at a time through each method and then through the curves; each
    method runs with the options :func:`~convsight.studies.attribution.method_options` gives
    it from ``layer``, ``batch_size``, ``engine`` and ``option_settings``.
    """
    protocol = Protocol(
        tuple(metrics), step, chunk, batch_size, engine, sanity_images, sanity_stages, seed
    )
    return evaluate_with(
        model, pixels, targets, classes, protocol, layer, show_progress, **option_settings
    )


def evaluate_with(
    model: Model,
    pixels: torch.Tensor,
    targets: Sequence[OneTarget],
    classes: Sequence[type[Method]],
    protocol: Protocol,
    layer: str | None = None,
    show_progress: bool = False,
    **option_settings: Any,
) -> dict[str, Any]:
    """:func:`evaluate_methods` for a :class:`Protocol`: ``{"methods": {name: entry}}``."""
    size = protocol.chunk
    chunks = (
        (pixels[start : start + size], list(targets[start : start + size]))
        for start in range(0, pixels.shape[0], size)
    )
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluate", total=len(classes) * pixels.shape[0], status="")
        result = evaluate_chunks(
            model, chunks, classes, protocol, layer, (bar, task), **option_settings
        )
    notice_engines(result, CURVES)
    return result
