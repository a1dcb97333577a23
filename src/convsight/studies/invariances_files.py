"""The files of ``convsight invariances``: the optimum, a strip PNG and a GIF per direction,
the overview of all paths, the spectrum with the response kept along each path, and the
arrays (what :meth:`~convsight.studies.invariances.InvariancesResult.save` writes). Every
figure says which basis the Hessian was taken in and labels each direction by the response
measured along its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convsight.analysis.invariances import Invariances
from convsight.analysis.measured_directions import Direction
from convsight.report import write_figure, write_npz
from convsight.report.grids import image_grid
from convsight.report.images import write_gif, write_image

GIF_SIDE = 160  # GIF frames are enlarged (nearest neighbour) to at least this many pixels


def _strip(images: torch.Tensor, values: torch.Tensor, angles: Sequence[float], title: str):
    titles = [f"{a:.0f}°: {v:.3g}" for a, v in zip(angles, values.tolist(), strict=True)]
    return image_grid(images.float().clamp(0, 1), titles, len(angles), title)


def basis_words(found: Invariances) -> str:
    """Which basis the Hessian was taken in, for a title."""
    return f"Hessian in the {found.basis.name} basis"


def _eigenvalues(ax, found: Invariances) -> None:
    inv, sel = found.invariant_values.tolist(), found.selective_values.tolist()
    ax.plot(range(1, len(inv) + 1), inv, "o-", label="largest (falls least, at the point)")
    ax.plot(range(1, len(sel) + 1), sel, "s-", label="smallest (falls most, at the point)")
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank of the eigenvalue")
    ax.set_ylabel("eigenvalue of the Hessian on the sphere")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _kept(ax, walked: dict[str, list[Direction]], angles: Sequence[float]) -> None:
    for kind, style in (("invariant", "-"), ("selective", "--")):
        for rank, d in enumerate(walked[kind], start=1):
            start = float(d.on_sphere[0])
            shown = d.on_sphere / start if start > 0 else d.on_sphere - start
            ax.plot(angles, shown.tolist(), style, label=f"{kind[:3]} {rank}: {d.label(angles)}")
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set_xlabel("degrees along the path")
    ax.set_ylabel("response kept (fraction of the start)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def spectrum_figure(
    found: Invariances,
    title: str,
    walked: dict[str, list[Direction]] | None = None,
    angles: Sequence[float] = (),
) -> Figure:
    """The eigenvalues found and, with ``walked``, the response each direction keeps along its
    path (measured: what its label says); the title names the basis."""
    panels = 2 if walked is not None else 1
    fig = Figure(figsize=(6 * panels, 3.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _eigenvalues(axes[0], found)
    if walked is not None:
        _kept(axes[1], walked, angles)
    fig.suptitle(f"{title}: {basis_words(found)}", fontsize=9)
    return fig


def write_directions(
    out: Path,
    found: Invariances,
    walked: dict[str, list[Direction]],
    angles: list[float],
    name: str,
) -> list[Path]:
    """Per direction, in the measured order: a strip PNG and a GIF; all of them in one figure."""
    written: list[Path] = []
    tiles, titles = [], []
    for kind, directions in walked.items():
        for rank, d in enumerate(directions, start=1):
            stem = f"{kind}_{rank:02d}"
            label = (
                f"{name}, {basis_words(found)}: {kind} {rank}, {d.label(angles)} (measured); "
                f"eigenvalue {d.eigenvalue:.3g} ({d.eigen_end} {d.eigen_rank})"
            )
            strip = _strip(d.images, d.on_sphere, angles, label)
            written.append(write_figure(out / f"{stem}.png", strip, within=out))
            written.append(write_gif(out / f"{stem}.gif", d.images, GIF_SIDE, within=out))
            tiles.append(d.images)
            titles += [
                f"{kind[:3]} {rank}, {a:.0f}°: {v:.3g}"
                for a, v in zip(angles, d.on_sphere.tolist(), strict=True)
            ]
    overview = image_grid(
        torch.cat(tiles).float().clamp(0, 1),
        titles,
        len(angles),
        f"{name}, {basis_words(found)}; labelled by the response kept along each path",
    )
    written.append(write_figure(out / "invariances.png", overview, within=out))
    return written


def write_outputs(
    out: Path,
    found: Invariances,
    walked: dict[str, list[Direction]],
    angles: list[float],
    title: str,
) -> list[Path]:
    """Optimum, strips, GIFs, the overview, the spectrum and the arrays (the directions in
    the basis's coordinates, measured order; the frames in pixels)."""
    written = [write_image(out / "optimum.png", found.image, min_side=128, within=out)]
    written += write_directions(out, found, walked, angles, title)
    spectrum = spectrum_figure(found, title, walked, angles)
    written.append(write_figure(out / "spectrum.png", spectrum, within=out))
    arrays = {
        f"{kind}{suffix}": torch.stack([getattr(d, part) for d in directions])
        for kind, directions in walked.items()
        if directions
        for suffix, part in (("", "vector"), ("_frames", "images"))
    }
    if found.basis.name != "pixel":
        arrays["coordinates"] = found.point
    path = out / "invariances.npz"
    written.append(write_npz(path, within=out, optimum=found.image, **arrays))
    return written
