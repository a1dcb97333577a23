"""The atlas's dataset pass streams (issue 29): the top examples equal the in-memory pass of
before and a brute-force ranking, and the pass's peak memory does not grow with the dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convsight.analysis.dataset_examples import layer_stats
from convsight.analysis.streamed_examples import brute_force_top
from convsight.data.images import load_readable_images
from convsight.studies.atlas import AtlasRequest, build_atlas

pytestmark = pytest.mark.slow


def test_top_examples_equal_the_in_memory_pass_on_the_sample_photos(
    mobilenet_v2, samples, tmp_path
):
    """MobileNet v2's features.2 over 52 of the sample photos: the atlas's examples.npz against
    the pass that held every photo (``layer_stats``): the same top images, values and
    positions, every image's maxima (the histograms) to 1e-5."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in samples[::2]:  # 52 photos
        (photos / path.name).symlink_to(path)
    out = tmp_path / "atlas"
    request = AtlasRequest(["features.2"], out, channels="0", dataset=photos, top_k=5,
                           presets=["paper"], steps=1, size=32, show_progress=False)  # fmt: skip
    build_atlas(mobilenet_v2, request)
    (found,) = list(out.rglob("examples.npz"))
    streamed = {k: torch.from_numpy(v) for k, v in np.load(found).items()}
    pixels, _, _ = load_readable_images(sorted(photos.iterdir()), mobilenet_v2.card)
    stats = layer_stats(mobilenet_v2, pixels, ["features.2"])["features.2"]
    values, images = brute_force_top(stats.maxima, 5)
    assert torch.equal(streamed["top_images"], images)
    torch.testing.assert_close(streamed["top_values"], values, rtol=1e-5, atol=1e-5)
    positions = stats.positions.permute(1, 0, 2).gather(1, images[..., None].expand(-1, -1, 2))
    assert torch.equal(streamed["top_positions"], positions)
    torch.testing.assert_close(streamed["max_per_image"], stats.maxima.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        streamed["mean_per_channel"], stats.means.mean(0), rtol=1e-5, atol=1e-5
    )
    assert int(streamed["images"]) == len(samples[::2]) == len(streamed["sample_images"])


PASS = """
import json, sys
from pathlib import Path
import torch
from torch import nn
from convsight import Model
from convsight.studies.atlas import AtlasRequest, build_atlas

def peak():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) * 1024

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(16, 2))
model = Model.from_module(net, input_size=SIDE, resize=None)
images, out = Path(sys.argv[1]), Path(sys.argv[2])
small = Path(sys.argv[3])  # a first atlas over a few images: every import and buffer warmed
build_atlas(model, AtlasRequest(["0"], str(out) + "-warm", channels="0", dataset=small,
                                top_k=9, presets=["paper"], steps=1, show_progress=False))
before = peak()
build_atlas(model, AtlasRequest(["0"], out, channels="0", dataset=images, top_k=9,
                                presets=["paper"], steps=1, show_progress=False))
print(json.dumps({"before": before, "after": peak()}))
"""
SIDE = 64


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png"
        )
    return folder


def test_the_pass_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    """A fresh process runs the atlas over 300, then (another process) 3,000 generated
    64x64 photos: the rise of its peak resident memory during the atlas is the same within
    40 MiB. The 2,700 more photos alone are 127 MiB of pixels, which the pass held before
    (over 300 and 3,000 96x96 photos it rose by 39 and 611 MiB; this pass by 5.9 and 7.5)."""
    small = write_images(tmp_path / "small", 20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rise = {}
    for count in (300, 3000):
        images = write_images(tmp_path / f"images{count}", count)
        script = PASS.replace("SIDE", str(SIDE))
        command = [sys.executable, "-c", textwrap.dedent(script), str(images),
                   str(tmp_path / f"out{count}"), str(small)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        rise[count] = measured["after"] - measured["before"]
        record = json.loads((tmp_path / f"out{count}" / "atlas-run.json").read_text())
        assert record["dataset"]["images"] == count  # every photo went through the pass
    mib = {count: round(value / 2**20, 1) for count, value in rise.items()}
    assert rise[3000] - rise[300] < 40 * 2**20, f"rise of the peak memory (MiB): {mib}"
