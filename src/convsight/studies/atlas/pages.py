"""The atlas's HTML pages: the index, a page per layer (filter redundancy, most similar
pairs) and a page per rendered channel, written from the channels' records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

import convsight
from convsight.analysis.filters import Redundancy, filter_redundancy
from convsight.layers import get_layer
from convsight.report import write_figure
from convsight.report.html import write_page
from convsight.studies.atlas.inputs import AtlasJob
from convsight.studies.atlas.rendering import load_npz
from convsight.studies.atlas.trust import TRUST_FILE, channel_trust, layer_trust, relevant_classes


def write_index(
    job: AtlasJob,
    out: Path,
    layers: list[dict[str, Any]],
    dataset: str | None,
    compression: dict[str, Any] | None = None,
) -> None:
    """The atlas's front page: every layer with its dead channels, the compression trials
    (when run) and the settings used."""
    _write_atlas_page(
        out / "index.html",
        "atlas_index.html",
        out,
        "",
        job,
        source=job.model.card.source,
        layers=layers,
        presets=job.presets,
        dataset=dataset,
        dataset_size=len(job.names),
        top_k=job.top_k,
        seed=job.seed,
        render_settings={p: _short(s.to_dict()) for p, s in job.settings.items()},
        compression=compression,
    )


def layer_pages(
    job: AtlasJob,
    name: str,
    folder_name: str,
    out: Path,
    compression: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The layer's page (with its rows of the ``compression`` trials, when run) and a page
    per rendered channel (links only among its chosen channels); the layer's row of the
    index (with ``channel_rows``)."""
    channels = job.chosen[name]
    folder = out / folder_name
    module = get_layer(job.model.module, name)
    redundancy = None
    if isinstance(module, nn.Conv2d):
        redundancy = filter_redundancy(job.model.module, name)
    if redundancy is not None and not (folder / "redundancy.png").exists():
        figure = _redundancy_figure(redundancy.curve(), len(redundancy.similarity), name)
        write_figure(folder / "redundancy.png", figure, within=out)
    rows = _channel_pages(job, name, folder, out, redundancy)
    layer = {
        "name": name,
        "dir": folder_name,
        "type": type(module).__name__,
        "channels": list(channels),
        "dead": [r["index"] for r in rows if r["dead"]],
        **_layer_trust(rows, job.presets[-1]),
        "channel_rows": rows,
        "redundancy": redundancy.curve() if redundancy is not None else None,
        "remaining_090": redundancy.remaining(0.9) if redundancy is not None else None,
        "colour": redundancy is not None and module.in_channels == 3,
        "pairs": _most_similar_pairs(redundancy, channels) if redundancy is not None else [],
        "compression": [r for r in (compression or {}).get("summary", []) if r["scope"] == name],
    }
    _write_atlas_page(
        folder / "index.html",
        "atlas_layer.html",
        out,
        "../",
        job,
        layer=layer,
        main_preset=job.presets[-1],
    )
    return layer


def _channel_pages(
    job: AtlasJob, name: str, folder: Path, out: Path, redundancy: Redundancy | None
) -> list[dict[str, Any]]:
    """A page per chosen channel of layer ``name`` from its record; the rows of the layer page."""
    channels = job.chosen[name]
    histograms = trust = None
    if (folder / "examples.npz").exists():
        histograms = load_npz(folder / "examples.npz")["max_per_image"]
    if job.dataset is not None and (folder / TRUST_FILE).exists():
        trust = load_npz(folder / TRUST_FILE)
    shown = set(channels)
    rows = []
    for i, c in enumerate(channels):
        record = json.loads((folder / "records" / f"c{c}.json").read_text())
        similar = []
        if redundancy is not None:
            ranked = redundancy.most_similar(c, len(redundancy.similarity) - 1)
            similar = [s for s in ranked if s[0] in shown][:5]
        row = {
            "index": c,
            "dead": record["dead"],
            "objective": record["values"],
            "examples": record.get("examples", []),
            "projections": record.get("projections", False),
            "invariance": record.get("invariance"),
            "histogram": histograms[c].tolist() if histograms is not None else [],
            "similar": similar,
            "trust": record.get("trust") or channel_trust(trust, c, {}),
            "classes": record.get("relevant_classes") or relevant_classes(trust, c, job.model.card),
            "prev": channels[i - 1],
            "next": channels[(i + 1) % len(channels)],
        }
        rows.append(row)
        _write_atlas_page(
            folder / f"c{c}.html",
            "atlas_channel.html",
            out,
            "../",
            job,
            layer=name,
            channel=row,
            presets=job.presets,
            dataset_size=len(job.names),
            softplus=job.invariances,
        )
    return rows


def _layer_trust(rows: list[dict[str, Any]], preset: str) -> dict[str, Any]:
    """The layer's silent and off-path channels (None: unknown, no dataset) and its trust
    column."""
    summary = layer_trust(rows, preset)
    return {"silent": summary["silent"], "off_path": summary["off_path"], "trust": summary}


def _most_similar_pairs(
    redundancy: Redundancy, channels: list[int]
) -> list[tuple[int, int, float, Any]]:
    """The (at most 10) most similar pairs of filters among ``channels``."""
    pairs = []
    index = torch.tensor(channels)
    sim = torch.triu(redundancy.similarity[index][:, index], 1)
    n = len(channels)
    top = sim.flatten().topk(min(10, n * (n - 1) // 2))
    for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        a, b = (channels[i] for i in divmod(flat, n))
        pairs.append((a, b, value, redundancy.transform[a][b]))
    return pairs


def _write_atlas_page(
    path: Path, template: str, out: Path, root: str, job: AtlasJob, **context: Any
) -> None:
    """Write one page of the atlas in ``out`` (``root``: the way back up to ``out``)."""
    write_page(
        path,
        template,
        within=out,
        root=root,
        version=convsight.__version__,
        model=job.model.card.name,
        **context,
    )


def _redundancy_figure(curve: list[tuple[float, int]], total: int, layer: str) -> Figure:
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot([t for t, _ in curve], [n for _, n in curve], "o-")
    ax.axhline(total, color="grey", lw=1, ls="--")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("filters left")
    ax.set_title(f"{layer}: {total} filters")
    ax.grid(alpha=0.3)
    return fig


def _short(settings: dict[str, Any]) -> str:
    keys = ("steps", "size", "param", "optimizer", "lr", "jitter", "l1")
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
