"""What a map explains: a target turns the model's output into one score per row.

Any callable from the model's output (the batch) to one score per row is a target. Built in:

- a class index or name, or one per image (:class:`ClassTarget`): ``scores[i, class_i]``;
- :class:`MarginTarget`: a class against the rest, ``scores[i, c] - max_{k != c} scores[i, k]``;
- :class:`SegmentationTarget` for N x K x H x W outputs: the class's scores summed over a mask,
  or over the pixels the model predicts as that class (as pytorch-grad-cam's
  ``SemanticSegmentationTarget``);
- :class:`OutputTarget` for regression and multi-output nets: output ``index`` of each row
  (the output flattened per row).

A list with one target per image gives each image its own. On the command line:
``--target class:NAME``, ``--target margin:NAME``, ``--target segment:CLASS[:MASK.png]``,
``--target output:INDEX``, and a plain ``NAME`` or index as before (:func:`parse_target`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from convsight.data.images import load_mask
from convsight.errors import ConvsightError
from convsight.models import Model

Rows = slice | Tensor
"""Which rows of a batch: a slice or a LongTensor of row numbers (repeats allowed)."""
CLI_FORMS = "class:NAME, margin:NAME, segment:CLASS[:MASK.png] or output:INDEX"


def _shape(output: Tensor) -> str:
    return " x ".join(map(str, output.shape))


def _label(model: Model, index: int) -> str | None:
    """The card's label of class ``index``, when the card names its classes."""
    labels = model.card.labels
    return labels[index] if labels and 0 <= index < len(labels) else None


def _class_of(model: Model, category: int | str, output_classes: int | None) -> int:
    """A class index from an index or a label: against the card, or against the output's
    class count when the card names no classes (a segmentation net without labels)."""
    if (
        model.card.num_classes is not None
        or isinstance(category, str)
        and not (category.strip().lstrip("-").isdigit())
    ):
        return model.class_index(category)
    index = int(category)
    if output_classes is not None and not 0 <= index < output_classes:
        raise ConvsightError(
            f"class {index} is out of range: model '{model.card.name}' gives "
            f"{output_classes} class scores (0-{output_classes - 1})"
        )
    return index


class Target:
    """A score per row of the model's output. Subclasses implement :meth:`__call__`;
    :meth:`bind` resolves names and checks the target against a model and a batch size
    before any work; :meth:`__getitem__` gives the target of some rows (the same target
    when it treats every row alike)."""

    classwise = True
    """Whether the output's dimension 1 holds class scores (a softmax over it makes sense)."""

    def __call__(self, output: Tensor) -> Tensor:
        raise NotImplementedError

    def __getitem__(self, rows: Rows) -> Target:
        return self

    def bind(self, model: Model, count: int) -> Target:
        """This target for ``count`` images of ``model``: names resolved, shapes checked."""
        return self

    def classes(self) -> list[int] | None:
        """Each row's class, for a class target (its files and captions); else None."""
        return None

    def describe(self) -> str:
        """The target in a few words, for the JSON and captions."""
        return type(self).__name__


Targets = Tensor | Target
"""Targets as methods receive them: one class index per row, or a bound :class:`Target`."""


def output_classes(model: Model) -> int | None:
    """How many scores per row (dimension 1) the model's output has, if it was probed."""
    shape = getattr(model, "output_shape", None)
    return int(shape[0]) if shape else None


def _need_rank(target: Target, output: Tensor, ranks: tuple[int, ...], form: str) -> None:
    if output.dim() not in ranks:
        raise ConvsightError(
            f"{target.describe()} needs {form} scores, but the model gives {_shape(output)}"
            + (
                "; for per-pixel scores use a SegmentationTarget (--target segment:CLASS)"
                if output.dim() == 4
                else ""
            )
        )


class ClassTarget(Target):
    """The score of a class: ``scores[i, class_i]``, one class for all rows or one each."""

    def __init__(self, classes: int | str | Sequence[int | str] | Tensor) -> None:
        self.given = classes
        self.label: str | None = None  # the card's name of the (first) class, once bound
        self.indices: Tensor | None = None
        if isinstance(classes, Tensor):
            self.indices = classes.detach().long().cpu().reshape(-1)

    def bind(self, model: Model, count: int) -> ClassTarget:
        given = self.given
        if isinstance(given, Tensor):
            items: list[Any] = [int(t) for t in given.flatten().tolist()]
        elif isinstance(given, (int, str)):
            items = [given]
        else:
            items = list(given)
        if len(items) == 1:
            items = items * count
        if len(items) != count:
            raise ConvsightError(f"{len(items)} targets for {count} images: give one per image")
        bound = ClassTarget(torch.tensor([model.class_index(t) for t in items], dtype=torch.long))
        bound.label = _label(model, int(bound.indices[0])) if bound.indices is not None else None
        return bound

    def _rows(self) -> Tensor:
        if self.indices is None:
            raise ConvsightError("a ClassTarget is used before bind(model, count)")
        return self.indices

    def __call__(self, output: Tensor) -> Tensor:
        _need_rank(self, output, (2,), "N x K class")
        index = self._rows().to(output.device)
        if index.numel() == 1 and output.shape[0] != 1:
            index = index.expand(output.shape[0])
        return output.gather(1, index.view(-1, 1)).squeeze(1)

    def __getitem__(self, rows: Rows) -> ClassTarget:
        part = ClassTarget(self._rows()[rows])
        part.label = self.label if self._rows().unique().numel() == 1 else None  # one class
        return part

    def classes(self) -> list[int] | None:
        return self._rows().tolist() if self.indices is not None else None

    def describe(self) -> str:
        if self.indices is not None and self.indices.unique().numel() == 1:
            return self.label or f"class {int(self.indices[0])}"
        return "class" if self.indices is not None else f"class {self.given}"


class MarginTarget(Target):
    """A class against the rest: its score minus the best other class's score."""

    def __init__(self, category: int | str) -> None:
        self.category = category
        self.index: int | None = category if isinstance(category, int) else None

    def bind(self, model: Model, count: int) -> MarginTarget:
        index = model.class_index(self.category)
        bound = MarginTarget(index)
        bound.category = _label(model, index) or index
        if (model.card.num_classes or 2) < 2:
            raise ConvsightError(f"a margin needs two classes; model '{model.card.name}' has 1")
        return bound

    def __call__(self, output: Tensor) -> Tensor:
        _need_rank(self, output, (2,), "N x K class")
        if self.index is None:
            raise ConvsightError("a MarginTarget is used before bind(model, count)")
        others = output.clone()
        others[:, self.index] = float("-inf")
        return output[:, self.index] - others.amax(1)

    def describe(self) -> str:
        name = self.category if isinstance(self.category, str) else f"class {self.category}"
        return f"margin of {name}"


class SegmentationTarget(Target):
    """Per-pixel class scores (N x K x H x W): class ``category``'s scores summed over
    ``mask`` (H x W or N x H x W booleans, or a PNG file: white is in, read in the input's
    frame as images are) or, without one, over the pixels predicted as that class."""

    def __init__(self, category: int | str, mask: Tensor | str | os.PathLike | None = None):
        self.category = category
        self.mask = mask
        self.index: int | None = category if isinstance(category, int) else None

    def bind(self, model: Model, count: int) -> SegmentationTarget:
        index = _class_of(model, self.category, output_classes(model))
        bound = SegmentationTarget(index)
        bound.category = _label(model, index) or index
        mask = self.mask
        if isinstance(mask, (str, os.PathLike)):
            mask = load_mask(Path(mask), model.card)
        if mask is not None:
            mask = torch.as_tensor(mask).bool()
            if mask.dim() not in (2, 3) or (mask.dim() == 3 and mask.shape[0] not in (1, count)):
                raise ConvsightError(
                    f"a segmentation mask is H x W or one per image (N x H x W), not "
                    f"{_shape(mask)} for {count} images"
                )
            if not bool(mask.any()):
                raise ConvsightError("the segmentation mask selects no pixel")
        bound.mask = mask
        return bound

    def __call__(self, output: Tensor) -> Tensor:
        _need_rank(self, output, (4,), "per-pixel N x K x H x W")
        if self.index is None:
            raise ConvsightError("a SegmentationTarget is used before bind(model, count)")
        if not 0 <= self.index < output.shape[1]:
            raise ConvsightError(
                f"class {self.index} is out of range: the model gives {output.shape[1]} "
                f"class scores per pixel"
            )
        scores = output[:, self.index]
        if self.mask is None:
            chosen = (output.detach().argmax(1) == self.index).to(scores.dtype)
        else:
            mask = torch.as_tensor(self.mask, device=output.device)
            if tuple(mask.shape[-2:]) != tuple(output.shape[-2:]):
                raise ConvsightError(
                    f"the segmentation mask is {mask.shape[-2]} x {mask.shape[-1]} but the "
                    f"model's output is {output.shape[-2]} x {output.shape[-1]} pixels"
                )
            chosen = mask.to(scores.dtype).expand_as(scores)
        return (scores * chosen).sum((1, 2))

    def __getitem__(self, rows: Rows) -> SegmentationTarget:
        if not isinstance(self.mask, Tensor) or self.mask.dim() == 2 or len(self.mask) == 1:
            return self
        part = SegmentationTarget(self.category, self.mask[rows])
        part.index = self.index
        return part

    def describe(self) -> str:
        where = "over a mask" if self.mask is not None else "over its predicted pixels"
        name = self.category if isinstance(self.category, str) else f"class {self.category}"
        return f"{name} summed {where}"


class OutputTarget(Target):
    """Output ``index`` of each row (the output flattened per row): a regression net's
    value, or one head of a multi-output net."""

    classwise = False

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def bind(self, model: Model, count: int) -> OutputTarget:
        shape = getattr(model, "output_shape", None)
        size = int(torch.Size(shape).numel()) if shape is not None else None
        if size is not None and not -size <= self.index < size:
            raise ConvsightError(
                f"output {self.index} is out of range: model '{model.card.name}' gives "
                f"{size} values per input (0-{size - 1})"
            )
        return self

    def __call__(self, output: Tensor) -> Tensor:
        flat = output.reshape(output.shape[0], -1)
        if not -flat.shape[1] <= self.index < flat.shape[1]:
            raise ConvsightError(
                f"output {self.index} is out of range: the model gives {flat.shape[1]} values"
            )
        return flat[:, self.index]

    def describe(self) -> str:
        return f"output {self.index}"


class FunctionTarget(Target):
    """Any callable from the output (the batch) to one score per row."""

    classwise = False

    def __init__(self, function: Callable[[Tensor], Tensor]) -> None:
        self.function = function

    def __call__(self, output: Tensor) -> Tensor:
        scores = self.function(output)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != (output.shape[0],):
            got = _shape(scores) if isinstance(scores, Tensor) else type(scores).__name__
            raise ConvsightError(
                f"target {getattr(self.function, '__name__', self.function)!r} must give one "
                f"score per row ({output.shape[0]}), not {got}"
            )
        return scores

    def describe(self) -> str:
        return f"function {getattr(self.function, '__name__', type(self.function).__name__)}"


class PerImage(Target):
    """One target per image: each row is scored by its own."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.classwise = all(t.classwise for t in self.targets)

    def __getitem__(self, rows: Rows) -> Target:
        index = range(len(self.targets))[rows] if isinstance(rows, slice) else rows.tolist()
        return PerImage([self.targets[i] for i in index])

    def __call__(self, output: Tensor) -> Tensor:
        if len(self.targets) != output.shape[0]:
            raise ConvsightError(f"{len(self.targets)} targets for {output.shape[0]} rows")
        groups: dict[int, list[int]] = {}
        for row, target in enumerate(self.targets):  # rows of one target run together
            groups.setdefault(id(target), []).append(row)
        scores = output.new_empty(output.shape[0])
        for rows in groups.values():
            index = torch.tensor(rows, device=output.device)
            scores[index] = self.targets[rows[0]](output[index])
        return scores

    def classes(self) -> list[int] | None:
        found = [t.classes() for t in self.targets]
        return None if any(c is None for c in found) else [c[0] for c in found if c]

    def describe(self) -> str:
        kinds = {t.describe() for t in self.targets}
        return kinds.pop() if len(kinds) == 1 else "one target per image"


OneTarget = int | str | Target | Callable[[Tensor], Tensor]
"""The target of one image, or of every image."""
TargetLike = OneTarget | Sequence[OneTarget] | Tensor | None
"""What a caller may give as a target (``None``: the class the model predicts)."""


def _one(item: Any) -> Target:
    if isinstance(item, Target):
        return item
    if isinstance(item, (int, str, Tensor)):
        return ClassTarget(item)
    if callable(item):
        return FunctionTarget(item)
    raise ConvsightError(f"a target is a class, a Target or a function, not {type(item)}")


def resolve_targets(model: Model, target: TargetLike, count: int) -> Target | None:
    """``target`` as a bound :class:`Target` for ``count`` images; None stays None."""
    if target is None:
        return None
    if isinstance(target, (int, str, Tensor, Target)) or callable(target):
        return _one(target).bind(model, count)
    items = list(target)
    classes = [t for t in items if isinstance(t, (int, str))]
    if len(classes) == len(items):
        return ClassTarget(classes).bind(model, count)
    if len(items) == 1 or all(item is items[0] for item in items):  # one for every image
        return _one(items[0]).bind(model, count)
    if len(items) != count:
        raise ConvsightError(f"{len(items)} targets for {count} images: give one, or one each")
    return PerImage([_one(t).bind(model, 1) for t in items])


def repeated(targets: Tensor | Target, count: int, times: int) -> Tensor | Target:
    """The targets of ``count`` rows, each row repeated ``times`` times in place (the rows of
    noisy copies, path points or occluded images of one image follow each other)."""
    return targets[torch.arange(count).repeat_interleave(times)]


def parse_target(text: str) -> int | str | Target:
    """One ``--target``: ``class:NAME``, ``margin:NAME``, ``segment:CLASS[:MASK.png]``,
    ``output:INDEX``, or a plain class name or index."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("class", "margin", "segment", "output"):
        return int(text) if text.lstrip("-").isdigit() else text
    if not rest.strip():
        raise ConvsightError(f"--target {text} names nothing after '{kind}:' ({CLI_FORMS})")
    category: int | str = int(rest) if rest.strip().isdigit() else rest.strip()
    if kind == "class":
        return ClassTarget(category)
    if kind == "margin":
        return MarginTarget(category)
    if kind == "output":
        if not rest.strip().lstrip("-").isdigit():
            raise ConvsightError(f"--target {text}: an output is a whole number (output:0)")
        return OutputTarget(int(rest))
    name, sep, mask = rest.partition(":")
    label: int | str = int(name) if name.strip().isdigit() else name.strip()
    return SegmentationTarget(label, mask=Path(mask) if sep and mask.strip() else None)
