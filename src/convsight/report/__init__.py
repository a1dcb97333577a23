"""Outputs: figures (grids, plots) and whole files written atomically."""

from convsight.report.files import (
    OUT_MARKER,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_path,
    check_inside,
    check_out_dir,
    is_own_temporary,
    out_dir_kept_if_written,
    out_file,
    prepare_out_dir,
    remove_own_temporaries,
    safe_filename,
    unique_names,
    write_checkpoint,
    write_figure,
    write_json,
    write_npz,
    write_text,
)
from convsight.report.grids import channel_grid
from convsight.report.plots import training_curves

__all__ = [
    "OUT_MARKER",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "atomic_path",
    "channel_grid",
    "check_inside",
    "check_out_dir",
    "is_own_temporary",
    "out_file",
    "out_dir_kept_if_written",
    "prepare_out_dir",
    "remove_own_temporaries",
    "safe_filename",
    "training_curves",
    "unique_names",
    "write_checkpoint",
    "write_figure",
    "write_json",
    "write_npz",
    "write_text",
]
