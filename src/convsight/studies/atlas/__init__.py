"""An atlas of a model's channels: a static site, resumable, every file written whole.

Layout of ``out``: ``index.html``; per layer ``<layer>/index.html`` (all channels, dead ones
marked, filter redundancy) and ``<layer>/c<k>.html`` (visualizations, top dataset examples
with their receptive-field patch, activation histogram, most similar filters). A channel is
done when ``<layer>/records/c<k>.json`` exists; a restarted run skips done channels.

``<layer>`` is the layer name made safe as a folder name (distinct per layer). The settings
are recorded in ``atlas-run.json``: a rerun continues only with the same settings (more
layers may be added), and refuses anything else in one sentence. While it runs, an atlas
holds a lock on ``.convsight-atlas.lock``; it deletes only its own temporary files.

Modules: ``inputs`` (checking what to render, :class:`AtlasJob`), ``run`` (the run record,
resuming, the lock), ``rendering`` (channels and dataset examples), ``trust`` (silent
channels, reach and rank), ``picture_paths`` (path similarity of the pictures), ``pages``
(the HTML pages), ``request`` (:class:`AtlasRequest`, :class:`AtlasResult`) and ``build``
(:func:`build_atlas`, the whole run).
"""

from convsight.studies.atlas.build import build_atlas
from convsight.studies.atlas.inputs import (
    AtlasDataset,
    AtlasJob,
    chosen_channels,
    dataset_images,
    load_dataset,
)
from convsight.studies.atlas.request import AtlasRequest, AtlasResult, Compression
from convsight.studies.atlas.run import (
    LOCK_FILE,
    RESERVED_NAMES,
    RUN_FILE,
    atlas_lock,
    check_resume,
    parameters_sha256,
)

__all__ = [
    "LOCK_FILE",
    "RESERVED_NAMES",
    "RUN_FILE",
    "AtlasDataset",
    "AtlasJob",
    "AtlasRequest",
    "AtlasResult",
    "Compression",
    "atlas_lock",
    "build_atlas",
    "check_resume",
    "chosen_channels",
    "dataset_images",
    "load_dataset",
    "parameters_sha256",
]
