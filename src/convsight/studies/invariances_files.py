"""The files of ``convsight invariances``: the optimum, a strip PNG and a GIF per direction,
the overview of all paths, the spectrum and the arrays (what
:meth:`~convsight.studies.invariances.InvariancesResult.save` writes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convsight.analysis.invariances import Invariances
from convsight.report import write_figure, write_npz
from convsight.report.grids import image_grid
from convsight.report.images import write_gif, write_image

GIF_SIDE = 160  # GIF frames are enlarged (nearest neighbour) to at least this many pixels


def _strip(images: torch.Tensor, values: torch.Tensor, angles: Sequence[float], title: str):
    titles = [f"{a:.0f}°: {v:.3g}" for a, v in zip(angles, values.tolist(), strict=True)]
    return image_grid(images.float().clamp(0, 1), titles, len(angles), title)


def spectrum_figure(found: Invariances, title: str) -> Figure:
    """The eigenvalues found: invariances (falls least) and selective directions (falls most)."""
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    inv, sel = found.invariant_values.tolist(), found.selective_values.tolist()
    ax.plot(range(1, len(inv) + 1), inv, "o-", label="invariances (response falls least)")
    ax.plot(range(1, len(sel) + 1), sel, "s-", label="selective (response falls most)")
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue of the Hessian on the sphere")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def write_directions(
    out: Path, found: Invariances, paths: dict, angles: list[float], name: str
) -> list[Path]:
    """Per direction: a strip PNG and a GIF; all of them in one figure."""
    written: list[Path] = []
    tiles, titles = [], []
    for kind in ("invariant", "selective"):
        values = getattr(found, f"{kind}_values").tolist()
        for i, eigenvalue in enumerate(values):
            stem = f"{kind}_{i + 1:02d}"
            images, on_sphere = paths[kind]["images"][i], paths[kind]["on_sphere"][i]
            label = f"{name}: {kind} {i + 1}, eigenvalue {eigenvalue:.3g}"
            strip = _strip(images, on_sphere, angles, label)
            written.append(write_figure(out / f"{stem}.png", strip, within=out))
            written.append(write_gif(out / f"{stem}.gif", images, GIF_SIDE, within=out))
            tiles.append(images)
            titles += [
                f"{kind[:3]} {i + 1}, {a:.0f}°: {v:.3g}"
                for a, v in zip(angles, on_sphere.tolist(), strict=True)
            ]
    overview = image_grid(torch.cat(tiles).float().clamp(0, 1), titles, len(angles), name)
    written.append(write_figure(out / "invariances.png", overview, within=out))
    return written


def write_outputs(
    out: Path, found: Invariances, paths: dict, angles: list[float], title: str
) -> list[Path]:
    """Optimum, strips, GIFs, the overview, the spectrum and the arrays."""
    written = [write_image(out / "optimum.png", found.point, min_side=128, within=out)]
    written += write_directions(out, found, paths, angles, title)
    written.append(write_figure(out / "spectrum.png", spectrum_figure(found, title), within=out))
    arrays = {f"{kind}_frames": paths[kind]["images"] for kind in ("invariant", "selective")}
    directions = {"invariant": found.invariant, "selective": found.selective}
    path = out / "invariances.npz"
    written.append(write_npz(path, within=out, optimum=found.point, **directions, **arrays))
    return written
