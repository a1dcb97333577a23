"""Filter redundancy: filters that are near-copies up to a colour permutation or a rotation/flip.

The study observes that some first-layer filters differ only by colour or orientation. For
every pair of filters of a conv layer we take the best cosine similarity over the eight
rotations/flips of the kernel and, where the layer reads 3 input channels, the six orders of
those channels. Each filter's mean is removed first, so the similarity is Pearson's r.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.layers import get_layer

DIHEDRAL = [
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip",
    "flip+rot90",
    "flip+rot180",
    "flip+rot270",
]
COLOUR_ORDERS = list(itertools.permutations(range(3)))


def _dihedral(w: torch.Tensor, k: int) -> torch.Tensor:
    x = w.flip(-1) if k >= 4 else w
    return torch.rot90(x, k % 4, dims=(-2, -1))


@dataclass
class Redundancy:
    """Pairwise best similarity of a layer's filters and which transform achieves it."""

    layer: str
    similarity: torch.Tensor  # C x C, diagonal 1
    transform: list[list[str]]  # name of the best transform of j onto i

    def most_similar(self, channel: int, k: int = 5) -> list[tuple[int, float, str]]:
        """The ``k`` filters most like ``channel``: (index, similarity, transform)."""
        row = self.similarity[channel].clone()
        row[channel] = -2
        top = row.topk(min(k, len(row) - 1))
        return [
            (int(j), float(v), self.transform[channel][int(j)])
            for v, j in zip(top.values, top.indices, strict=True)
        ]

    def groups(self, threshold: float) -> list[list[int]]:
        """Filters at least ``threshold`` alike, joined into groups (connected components of
        the similarity graph), each sorted, in order of their first filter."""
        n = len(self.similarity)
        parent = list(range(n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        pairs = (torch.triu(self.similarity, 1) >= threshold).nonzero().tolist()
        for i, j in pairs:
            parent[find(i)] = find(j)
        members: dict[int, list[int]] = {}
        for i in range(n):
            members.setdefault(find(i), []).append(i)
        return sorted(members.values())

    def remaining(self, threshold: float) -> int:
        """How many filters remain when those at least ``threshold`` alike are merged."""
        return len(self.groups(threshold))

    def curve(self, thresholds: list[float] | None = None) -> list[tuple[float, int]]:
        """(threshold, filters remaining) for a range of thresholds."""
        thresholds = thresholds or [round(0.5 + 0.025 * i, 3) for i in range(21)]
        return [(t, self.remaining(t)) for t in thresholds]


def filter_redundancy(module: nn.Module, layer: str) -> Redundancy:
    """Best similarity between every pair of filters of the conv layer ``layer``."""
    conv = get_layer(module, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ConvsightError(f"layer '{layer}' is a {type(conv).__name__}, not a Conv2d")
    w = conv.weight.detach().float().cpu()
    # Compare shapes, not brightness: remove each filter's mean (cosine becomes Pearson's r).
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    if w.shape[-1] != w.shape[-2]:
        raise ConvsightError(f"layer '{layer}' has non-square kernels; rotations do not apply")
    n = w.shape[0]
    base = nn.functional.normalize(w.flatten(1), dim=1)
    orders = COLOUR_ORDERS if w.shape[1] == 3 else [tuple(range(w.shape[1]))]
    best = torch.full((n, n), -2.0)
    which = torch.zeros(n, n, dtype=torch.long)
    names: list[str] = []
    for order in orders:
        for k in range(8):
            moved = _dihedral(w[:, list(order)], k)
            sim = base @ nn.functional.normalize(moved.flatten(1), dim=1).T
            better = sim > best + 1e-6
            best = torch.where(better, sim, best)
            which[better] = len(names)
            colour = (
                ""
                if order == tuple(range(len(order)))
                else "colour " + "".join("RGB"[i] for i in order)
            )
            names.append(" + ".join(x for x in (colour, DIHEDRAL[k] if k else "") if x) or "same")
    best.fill_diagonal_(1.0)
    transform = [[names[int(which[i, j])] for j in range(n)] for i in range(n)]
    return Redundancy(layer, best, transform)
