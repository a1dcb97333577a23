"""Memory that does not grow with the input (issue 24): `evaluate` streams a folder a chunk at a
time, and the batchable passes (predicted classes, deletion / insertion, activations) run a
batch at a time, whatever the number of images."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import convsight.data.images as images_module
from convsight.activations import activations
from convsight.attribution import method_class
from convsight.data.images import ImageStream, load_readable_images
from convsight.errors import ConvsightError
from convsight.metrics import deletion
from convsight.models import Model
from convsight.studies.evaluation import EvaluationRequest, evaluate_methods, write_evaluation

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
CHUNK = 8  # images write_evaluation decodes and evaluates at a time
CURVE_BATCH = 16  # rows per forward pass of the curves when no batch size is given


def bench_module(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"convsight_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_evaluate_peak_memory_over_1000_images_is_within_1_2x_of_100(tmp_path):
    """`convsight evaluate` in a fresh process over 100, then 1,000 generated 8x8 PNGs (resized
    to the model's 64x64): the peak resident memory of the second is at most 1.2x the first.
    Holding every image's pixels and one unbatched forward pass, as before, made it 1.8x."""
    bench = bench_module("evaluate_memory")
    model = bench.write_model(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: quick on a busy machine too
    peaks = {}
    for count in (100, 1000):
        folder = bench.write_images(tmp_path / f"images{count}", count, seed=count)
        out = tmp_path / f"out{count}"
        peaks[count] = bench.evaluate_peak(model, folder, out, env)["peak_rss_bytes"]
        summary = json.loads((out / "evaluation.json").read_text())
        assert len(summary["methods"]["saliency"]["deletion_auc_per_image"]) == count
    mib = {count: round(peak / 2**20) for count, peak in peaks.items()}
    assert peaks[1000] <= 1.2 * peaks[100], f"peak resident memory (MiB) by images: {mib}"


@pytest.fixture
def tiny8(tiny) -> Model:
    """The tiny RGB classifier with a card that resizes any photo to its 32x32 input."""
    return Model(tiny.module, tiny.card.updated(resize=32))


def write_folder(folder: Path, count: int, bad: dict[int, bytes] | None = None) -> Path:
    """``count`` random 8x8 PNGs, with an unreadable file (these bytes) after image i of
    ``bad``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i:03d}.png")
        if i in (bad or {}):
            (folder / f"im{i:03d}_bad.png").write_bytes(bad[i])
    return folder


@contextmanager
def batch_sizes(model: Model, count: Callable[[], int] | None = None) -> Iterator[list]:
    """The rows of every batch that reaches ``model``'s network while inside (with what
    ``count`` says at that moment, when given)."""
    seen: list = []

    def note(_, args) -> None:
        seen.append(len(args[0]) if count is None else (len(args[0]), count()))

    handle = model.module.register_forward_pre_hook(note)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.slow
def test_evaluate_never_holds_the_folder_at_once(tiny8, tmp_path, monkeypatch):
    """40 images (and two unreadable files): no batch that reaches the network is larger than
    a chunk or the curves' batch, and the first forward pass comes after at most one chunk
    was decoded. Decoding every image first and predicting all 40 in one pass, as before,
    fails both."""
    folder = write_folder(tmp_path / "imgs", 40, {3: b"not a png", 30: b"\x89PNG\r\n"})
    decoded: list[Path] = []
    load = images_module.load_image
    monkeypatch.setattr(images_module, "load_image", lambda p: (decoded.append(p), load(p))[1])
    with batch_sizes(tiny8, lambda: len(decoded)) as seen:
        request = EvaluationRequest(
            folder, methods=["saliency"], metrics=["deletion", "insertion", "sanity"],
            step=256, sanity_images=3, sanity_stages=2,
        )  # fmt: skip
        write_evaluation(tiny8, request, out=tmp_path / "out", show_progress=False)
    rows = [r for r, _ in seen]
    assert len(decoded) == 42
    assert max(rows) <= max(CHUNK, CURVE_BATCH), sorted(set(rows))
    assert seen[0][1] <= CHUNK + 1  # only the first chunk (with a bad file) was decoded
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert sorted(Path(s["path"]).name for s in summary["skipped_images"]) == [
        "im003_bad.png",
        "im030_bad.png",
    ]
    assert len(summary["images"]) == 40
    assert len(summary["methods"]["saliency"]["sanity"]["stages"][0]["spearman"]) == 3
    # streamed from the folder, the numbers are those of the images evaluated in memory
    pixels, _, _ = load_readable_images(sorted(folder.glob("*.png")), tiny8.card)
    targets = tiny8.module(tiny8.normalize(pixels)).argmax(1).tolist()
    in_memory = evaluate_methods(
        tiny8, pixels, targets, [method_class("saliency")], ("deletion", "insertion"), step=256
    )["methods"]["saliency"]
    for kind in ("deletion", "insertion"):
        np.testing.assert_allclose(
            summary["methods"]["saliency"][f"{kind}_auc_per_image"],
            in_memory[f"{kind}_auc_per_image"],
            rtol=1e-5,
            atol=1e-6,
        )


def test_the_stream_decodes_a_chunk_at_a_time_and_reports_what_it_skips(tiny8, tmp_path):
    folder = write_folder(tmp_path / "imgs", 16, {0: b"", 15: b"junk"})
    files = sorted(folder.glob("*.png"))
    stream = ImageStream(files, tiny8.card, 8)
    stream.check()
    chunks = list(stream)
    assert [len(c.files) for c in chunks] == [8, 8, 0]  # the last: only the file after
    assert [len(c.skipped) for c in chunks] == [1, 0, 1]
    pixels, kept, skipped = load_readable_images(files, tiny8.card)
    assert stream.kept == kept and stream.skipped == skipped
    assert torch.equal(torch.cat([c.pixels for c in chunks]), pixels)
    with pytest.raises(ConvsightError, match="no image could be read"):
        ImageStream([folder / "im000_bad.png"], tiny8.card, 8).check()


@pytest.mark.slow
def test_curves_and_predictions_without_targets_run_a_batch_at_a_time(tiny):
    pixels = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(40, 32, 32, generator=torch.Generator().manual_seed(1))
    with batch_sizes(tiny) as rows:
        deletion(tiny, pixels, maps, step=256, batch_size=5)
    assert max(rows) <= 5, sorted(set(rows))
    with batch_sizes(tiny) as rows:
        predicted = method_class("saliency")(tiny).predict(pixels)
    assert max(rows) <= 4 and predicted.shape == (40,), sorted(set(rows))
    with torch.no_grad():
        assert torch.equal(predicted, tiny.module(tiny.normalize(pixels)).argmax(1))


@pytest.mark.slow
def test_activations_run_a_batch_at_a_time_and_give_the_one_pass_maps(tiny):
    pixels = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = ["features.0", "features.4"]
    with batch_sizes(tiny) as rows:
        maps = activations(tiny, pixels, layers, batch_size=6)
    assert max(rows) <= 6, sorted(set(rows))
    whole = activations(tiny, pixels, layers, batch_size=40)
    for name in layers:
        assert maps[name].shape[0] == 40
        torch.testing.assert_close(maps[name], whole[name])
