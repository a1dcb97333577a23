"""Directions are labelled by the response measured along their paths, not by eigenvalue."""

from __future__ import annotations

import pytest
import torch

from convsight.analysis.invariances import invariances
from convsight.analysis.measured_directions import kept_label, rank_by_response, walk


def saddle_unit(x: torch.Tensor) -> torch.Tensor:
    """At r e1 on the unit sphere (4 values): along e2 the curvature is the smallest, but a
    quartic term makes it lose the most a few degrees out; e4 curves most and keeps more."""
    x = x.flatten(1)
    return (
        x[:, 0] - 0.01 * x[:, 1] ** 2 - 10 * x[:, 1] ** 4 - 0.2 * x[:, 2] ** 2 - 0.5 * x[:, 3] ** 2
    )


def test_labels_follow_the_measured_response_where_eigenvalues_disagree():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    found = invariances(saddle_unit, x, k=1, tol=1e-10)
    e2 = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    e4 = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert abs(float(found.invariant[0].flatten() @ e2)) > 0.99  # eigenvalues: e2 is invariant
    assert abs(float(found.selective[0].flatten() @ e4)) > 0.99
    angles = torch.linspace(0, 30, 7).tolist()
    walked = walk(saddle_unit, found, angles, torch.device("cpu"))
    invariant, selective = rank_by_response(walked, 1)
    assert (invariant[0].eigen_end, selective[0].eigen_end) == ("smallest", "largest")
    assert invariant[0].mean_response > selective[0].mean_response
    assert invariant[0].label(angles).startswith("keeps")  # e4 keeps cos 30° - 0.125 ≈ 74%
    assert selective[0].label(angles).startswith("loses")
    kept = selective[0].kept()
    assert kept is not None and kept[0] == pytest.approx(1.0) and min(kept) < 0.5


def test_kept_label():
    assert kept_label([0, 5, 10], [2.0, 1.96, 1.94]) == "keeps 97% to 10°"
    assert kept_label([0, 5, 10], [2.0, 1.04, 1.1]) == "keeps 52% to 10°"
    assert kept_label([0, 5, 10], [2.0, 0.96, 0.5]) == "loses 52% by 5°"
    assert kept_label([0, 5, 10], [-1.0, -1.5, -2.0]) == "from -1: -1 by 10°"
