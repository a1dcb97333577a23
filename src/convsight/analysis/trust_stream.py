"""Trust measures (:mod:`convsight.analysis.trust`) of every row of a render in one streamed
pass over a dataset: each row's top-k images by the objective it maximized, how many images
score above its render, and a fixed-seed random sample, holding one batch and the top-k's
path vectors at a time. :func:`trust_from_folder` streams an image folder (and its
sub-folders) checked first by :func:`open_dataset`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from convsight.analysis.trust import (
    OUTPUT,
    RANDOM_IMAGES,
    RANDOM_SEED,
    TOP_K,
    Batches,
    PathSimilarity,
    Reach,
    compare_paths,
    evaluate,
    last_layers,
    layer_means,
    path_layers,
    render_values,
)
from convsight.data.images import ImageStream, image_files
from convsight.errors import ConvsightError
from convsight.models import Model
from convsight.optvis.objectives import Objective

__all__ = [
    "OUTPUT",
    "DatasetTrust",
    "TrustDataset",
    "UnitTrust",
    "open_dataset",
    "random_sample",
    "stream_trust",
    "trust_from_folder",
]


# --- one streamed pass --------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitTrust:
    """Both measures of one render, with the dataset indices of its top images (best first)."""

    reach: Reach
    path: PathSimilarity
    top_images: list[int]

    @property
    def flagged(self) -> bool:
        return self.path.flagged

    def to_json(self) -> dict[str, Any]:
        return {
            "reach": self.reach.to_json(),
            "path": self.path.to_json(),
            "flagged": self.flagged,
            "top_images": self.top_images,
        }

    def mark(self) -> str:
        """A short caption: ``reach 1.3x, rank 1/104`` and ``off-path`` when flagged."""
        return self.reach.mark() + (", off-path" if self.flagged else "")


class _Running:
    """The streamed state: each row's top-k (values, indices, path vectors), how many images
    score above each row's render, and the sum of the random sample's path vectors."""

    def __init__(self, rendered: Tensor, path: Sequence[str], top_k: int, sample: set[int]):
        self.rendered, self.path, self.top_k, self.sample = rendered, list(path), top_k, sample
        rows = len(rendered)
        self.values = torch.empty(rows, 0)
        self.indices = torch.empty(rows, 0, dtype=torch.long)
        self.vectors: dict[str, Tensor] = {}
        self.above = torch.zeros(rows, dtype=torch.long)
        self.random: dict[str, Tensor] = {}
        self.count = self.random_count = 0

    def add(self, indices: Tensor, values: Tensor, means: dict[str, Tensor]) -> None:
        """A batch: its images' indices (n), objective (n x R) and path means (n x C)."""
        rows, n = len(self.rendered), len(indices)
        self.count += n
        self.above += (values > self.rendered[None]).sum(0)
        picked = [i for i, index in enumerate(indices.tolist()) if index in self.sample]
        self.random_count += len(picked)
        for name in self.path:
            chosen = means[name][picked].double().sum(0)
            self.random[name] = self.random.get(name, 0) + chosen
        values = torch.cat([self.values, values.T.float()], 1)
        every = torch.cat([self.indices, indices.long().expand(rows, n)], 1)
        by_index = every.argsort(dim=1, stable=True)
        order = by_index.gather(1, (-values.gather(1, by_index)).argsort(dim=1, stable=True))
        order = order[:, : self.top_k]
        self.values, self.indices = values.gather(1, order), every.gather(1, order)
        for name in self.path:
            batch = means[name].double()[None].expand(rows, -1, -1)
            both = torch.cat([self.vectors.get(name, batch[:, :0]), batch], 1)
            self.vectors[name] = both.gather(1, order[..., None].expand(-1, -1, both.shape[2]))

    def result(self, renders: dict[str, Tensor]) -> list[UnitTrust]:
        """Each row's :class:`UnitTrust` (``renders``: the renders' path means, R x C)."""
        if not self.random_count:
            raise ConvsightError("the random sample of the dataset holds no readable image")
        random = {n: self.random[n] / self.random_count for n in self.path}
        found = []
        for r in range(len(self.rendered)):
            top = {n: self.vectors[n][r].mean(0) for n in self.path}
            mine = {n: renders[n][r] for n in self.path}
            reached = Reach.of_counts(
                float(self.rendered[r]), self.values[r], int(self.above[r]), self.count
            )
            path = compare_paths(self.path, mine, top, random)
            found.append(UnitTrust(reached, path, self.indices[r].tolist()))
        return found


def random_sample(count: int, size: int = RANDOM_IMAGES, seed: int = RANDOM_SEED) -> list[int]:
    """The dataset indices (of ``count`` images) of the fixed-seed random sample."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=generator)[:size].tolist())


def stream_trust(
    model: Model,
    objective: Objective,
    renders: Tensor,
    layer: str,
    batches: Batches,
    count: int,
    top_k: int = TOP_K,
    random: int = RANDOM_IMAGES,
    layers: Sequence[str] | None = None,
) -> list[UnitTrust]:
    """Reach and path similarity of each render (row i of ``objective`` maximized by
    ``renders[i]``, a unit of ``layer``; :data:`OUTPUT` for classes) in one pass over
    ``batches`` of a dataset of ``count`` images. The top images are each row's ``top_k``
    images by ``objective`` (ties: the lower index first); the random images are
    :func:`random_sample` (``random`` of them). Memory holds one batch and the top-k."""
    path = path_layers(model, layer) if layers is None else list(layers)
    rendered = render_values(model, objective, renders)
    render_means = layer_means(model, renders, path)
    state = _Running(rendered, path, top_k, set(random_sample(count, random)))
    for indices, pixels in batches:
        if len(indices):
            values, means = evaluate(model, objective, len(renders), pixels, path)
            state.add(indices, values, means)
    if not state.count:
        raise ConvsightError("the dataset holds no readable image")
    return state.result(render_means)


# --- a folder of images -------------------------------------------------------------------------


@dataclass
class TrustDataset:
    """An image folder checked for trust measures (every image below it, sorted): its files,
    and a stream that decodes them ``batch`` at a time (the first batch decoded by the check)."""

    folder: str
    files: list[Path]
    stream: ImageStream

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The readable images: each one's index in :attr:`files` and its pixels."""
        where = {path: i for i, path in enumerate(self.files)}
        for chunk in self.stream:
            yield torch.tensor([where[p] for p in chunk.files], dtype=torch.long), chunk.pixels


def open_dataset(
    folder: str | os.PathLike, model: Model, batch: int = 16, what: str = "--dataset"
) -> TrustDataset:
    """The images of ``folder`` (and its sub-folders) for ``model``: a missing folder, one
    without images or without one image the model can read fails here, in one sentence."""
    files = image_files(folder, what, recursive=True)
    stream = ImageStream(files, model.card, batch, f"image of {what} {folder}")
    stream.check()
    return TrustDataset(str(folder), files, stream)


@dataclass(frozen=True)
class DatasetTrust:
    """Trust measures of a render's rows over a dataset: each row's :class:`UnitTrust`, the
    folder, how many images were read (and which were skipped), the layers compared."""

    dataset: str
    images: int
    skipped: list[dict[str, str]]
    top_k: int
    random: int
    layers: list[str]
    units: list[UnitTrust]
    names: list[str]  # each dataset index's file, relative to the folder

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i``'s JSON: :meth:`UnitTrust.to_json` with its top images' file names."""
        found = self.units[i].to_json()
        found["top_images"] = [self.names[j] for j in found["top_images"] if j >= 0]
        return found

    def to_json(self) -> dict[str, Any]:
        """What the measures were taken over (the rows carry the measures)."""
        return {
            "dataset": self.dataset,
            "images": self.images,
            "skipped": len(self.skipped),
            "top_k": self.top_k,
            "random": self.random,
            "random_seed": RANDOM_SEED,
            "layers": self.layers,
            "decisive_layers": self.layers[len(self.layers) - last_layers(len(self.layers)) :],
        }


def trust_from_folder(
    model: Model,
    objective: Objective,
    renders: Tensor,
    layer: str,
    dataset: TrustDataset | str | os.PathLike,
    top_k: int = TOP_K,
    random: int = RANDOM_IMAGES,
    layers: Sequence[str] | None = None,
) -> DatasetTrust:
    """:func:`stream_trust` over the images of a folder (or one :func:`open_dataset` checked)."""
    data = dataset if isinstance(dataset, TrustDataset) else open_dataset(dataset, model)
    path = path_layers(model, layer) if layers is None else list(layers)
    units = stream_trust(
        model, objective, renders, layer, data.batches(), len(data.files), top_k, random, path
    )
    root = Path(data.folder)
    names = [p.relative_to(root).as_posix() for p in data.files]
    return DatasetTrust(
        data.folder, len(data.stream.kept), data.stream.skipped, top_k, random, path, units, names
    )
