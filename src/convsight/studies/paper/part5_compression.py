"""The study's discussion, tested: remove the filters that are near-copies of another."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convsight.errors import ConvsightError
from convsight.studies.paper.inputs import PathLike
from convsight.studies.paper.parts import Context, Part, Skip


@dataclass(frozen=True)
class CompressionRun:
    """One trained network's removals: the figure and the ``compression.json`` it wrote."""

    network: str
    figure: str
    result: dict[str, Any]

    @property
    def largest(self) -> dict[str, Any] | None:
        """The summary row that removes the most filters over the whole network (None: no
        filter was a near-copy at any threshold)."""
        if not self.result["summary"]:
            return None
        scope = self.result["summary"][-1]["scope"]
        rows = [row for row in self.result["summary"] if row["scope"] == scope]
        return min(rows, key=lambda row: row["kept"])


@dataclass(frozen=True)
class CompressionResult:
    """The runs on the study's networks, and why a network was left out."""

    runs: list[CompressionRun]
    not_run: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            run.network: {k: v for k, v in run.result.items() if k != "trials"} for run in self.runs
        }
        return entry | {"not_run": self.not_run}


class CompressionPart(Part[CompressionResult]):
    """Remove near-copy filters of the MNIST CNN (part 2) and the five-class CNN (part 4),
    beside smallest-L1 and random removals, before and after one fine-tuning epoch."""

    key = "compression"
    section = "compression"
    table_rank = 2

    def networks(self, ctx: Context) -> dict[str, tuple[Path, PathLike | None]]:
        """Each network this run trained: its checkpoint and its data folder."""
        subset = ctx.inputs.subset or ctx.out / "part4" / "data"
        return {
            "MNIST CNN": (ctx.out / "part2" / "mnist" / "model.pt", ctx.inputs.data_dir),
            "five-class CNN": (ctx.out / "part4" / "self-built" / "model.pt", subset),
        }

    def run(self, ctx: Context) -> CompressionResult:
        from convsight.models import load_model
        from convsight.studies.compression import CompressionRequest, compress

        runs, not_run = [], {}
        for network, (checkpoint, data) in self.networks(ctx).items():
            if not checkpoint.is_file():
                not_run[network] = "not trained in this run"
                continue
            if data is None:
                not_run[network] = "no MNIST folder (--data-dir) to test it on"
                continue
            out = ctx.out / "compression" / checkpoint.parent.name
            try:
                request = CompressionRequest(
                    data, out, thresholds=ctx.plan.compression_thresholds,
                    random_repeats=ctx.plan.compression_repeats,
                    finetune_images=ctx.plan.compression_finetune_images, seed=ctx.seed,
                    show_progress=ctx.show_progress,
                )  # fmt: skip
                result = compress(load_model(str(checkpoint)), request).to_json()
            except ConvsightError as exc:
                not_run[network] = str(exc)
                continue
            runs.append(CompressionRun(network, ctx.rel(out / "compression.png"), result))
        if not runs:
            raise Skip("; ".join(f"{k}: {v}" for k, v in not_run.items()))
        return CompressionResult(runs, not_run)
