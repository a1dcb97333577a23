"""Outputs: figures (grids, plots) and whole files written atomically."""

from convsight.report.files import (
    atomic_path,
    prepare_out_dir,
    write_checkpoint,
    write_figure,
    write_json,
    write_npz,
    write_text,
)
from convsight.report.grids import channel_grid
from convsight.report.plots import training_curves

__all__ = [
    "atomic_path",
    "channel_grid",
    "prepare_out_dir",
    "training_curves",
    "write_checkpoint",
    "write_figure",
    "write_json",
    "write_npz",
    "write_text",
]
