"""The model-randomization sanity check (Adebayo et al. 2018), https://arxiv.org/abs/1810.03292.

Layers are re-initialized from the top (the logits) down, cumulatively; after each stage the
map is computed again and compared with the original by Spearman rank correlation (of the
absolute maps, per image). A map that stays similar while the network it explains is destroyed
does not explain the network. The model itself is never touched: the check works on a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convsight.attribution import Method, method_class
from convsight.attribution.base import check_inputs
from convsight.errors import ConvsightError
from convsight.layers import get_layer
from convsight.models import Model
from convsight.targets import ClassTarget, TargetLike, resolve_targets


def rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks (from 0) of a 1-d tensor; ties share their mean rank."""
    ordered, order = values.sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    mean_rank = (ends - counts + ends - 1).double() / 2
    ranks = torch.empty(values.shape[0], dtype=torch.float64, device=values.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of rows (N x ... each -> N)."""
    out = []
    for x, y in zip(a.flatten(1), b.flatten(1), strict=True):
        rx, ry = rank(x.double()), rank(y.double())
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = (rx.norm() * ry.norm()).item()
        out.append(float((rx @ ry).item() / denom) if denom > 0 else float("nan"))
    return torch.tensor(out)


def randomization_layers(module: nn.Module) -> list[str]:
    """Every layer with its own parameters, from the output back to the input."""
    names = [
        name
        for name, m in module.named_modules()
        if name and any(True for _ in m.parameters(recurse=False))
    ]
    return names[::-1]


def _randomize(module: nn.Module, generator_seed: int) -> None:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(generator_seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if reset is not None and any(True for _ in m.parameters(recurse=False)):
                reset()
            elif any(True for _ in m.parameters(recurse=False)):
                for p in m.parameters(recurse=False):
                    p.normal_(0, 0.01)


@dataclass
class SanityResult:
    """Rank correlation of each image's map with its original after each randomization stage.

    ``layers[k]`` is the deepest layer randomized at stage k (all layers before it in the list
    too); ``spearman`` is stages x images.
    """

    method: str
    layers: list[str]
    spearman: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)

    def mean(self) -> list[float]:
        """Mean correlation over images at each stage."""
        return [float(row.nanmean()) for row in self.spearman]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "stages": [
                {"randomized_down_to": name, "spearman_mean": m, "spearman": row.tolist()}
                for name, m, row in zip(self.layers, self.mean(), self.spearman, strict=True)
            ],
        }


def model_randomization(
    model: Model,
    method: str | type[Method],
    inputs: torch.Tensor,
    target: TargetLike = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    stages: int | None = None,
    **options: Any,
) -> SanityResult:
    """Cascading randomization of ``layers`` (default: every layer with parameters, top down).

    ``method`` is a short name or a Method class; ``options`` go to its ``attribute``. The
    target is fixed to the original model's class (or ``target``) at every stage. ``stages``
    computes maps after only that many evenly spaced layers of the cascade (the last included);
    every layer is still randomized in turn.
    """
    cls = method_class(method) if isinstance(method, str) else method
    inputs = check_inputs(model, inputs)
    names = list(layers) if layers is not None else randomization_layers(model.module)
    if not names:
        raise ConvsightError("no layer to randomize")
    for name in names:
        get_layer(model.module, name)
    targets = resolve_targets(model, target, inputs.shape[0])
    original = cls(model)
    if targets is None:
        targets = ClassTarget(original.predict(inputs))
    reference = original.heatmap(inputs, targets, **options).abs()
    work = copy.deepcopy(model.module)
    randomized = Model(work, model.card)
    if stages is not None and stages < 1:
        raise ConvsightError("the randomization check needs at least one stage")
    count = len(names) if stages is None else min(stages, len(names))
    cuts = sorted({round((i + 1) * len(names) / count) - 1 for i in range(count)})
    rows, done, maps = [], [], [reference] if keep_maps else []
    for k, name in enumerate(names):
        _randomize(get_layer(work, name), seed + k)
        if k not in cuts:
            continue
        current = cls(randomized).heatmap(inputs, targets, **options).abs()
        rows.append(spearman(reference, current))
        done.append(name)
        if keep_maps:
            maps.append(current)
    return SanityResult(cls.name, done, torch.stack(rows), maps)
